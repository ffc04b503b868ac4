//! A static sentence encoder: a text's vector is the normalised sum of one precomputed row per
//! token, no neural network at query time.
//!
//! The table has one row per id the tokenizer can produce, plus a last row: the vector of a
//! text that yields no weighted token at all (the empty text). Each row already carries its
//! token's weight, so the sum is the weighted mean up to a positive factor, which the L2
//! normalisation removes. Rows of tokens that should not count (the special tokens a template
//! adds) are zero.

use std::path::Path;

use crate::error::{Error, Result};
use crate::tokenize::{Keep, TextTokenizer};

/// Token table and tokenizer; read-only once built, so threads may share it.
pub struct StaticEncoder {
    tokenizer: TextTokenizer,
    table: Vec<f32>,
    dim: usize,
}

impl StaticEncoder {
    /// `table` is row-major, `(tokenizer vocabulary + 1) x dim`, every value finite.
    pub fn new(
        tokenizer_path: &Path,
        window: (usize, Keep),
        table: Vec<f32>,
        dim: usize,
    ) -> Result<Self> {
        let tokenizer = TextTokenizer::from_file(tokenizer_path, Some(window))?;
        if dim == 0 {
            return Err(Error::InvalidValue(
                "the token table's dimension must be at least 1".into(),
            ));
        }
        let rows = tokenizer.vocab_size() + 1;
        if table.len() != rows * dim {
            return Err(Error::Dimension {
                what: "the token table".into(),
                expected: format!(
                    "{rows} rows of {dim} (one per id of {} and one for a text without tokens)",
                    tokenizer.path().display()
                ),
                got: format!("{} values", table.len()),
            });
        }
        if let Some(i) = table.iter().position(|v| !v.is_finite()) {
            return Err(Error::InvalidValue(format!(
                "the token table must be finite, got {} in row {}",
                table[i],
                i / dim
            )));
        }
        Ok(Self {
            tokenizer,
            table,
            dim,
        })
    }

    /// The vector width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    fn row(&self, id: usize) -> &[f32] {
        &self.table[id * self.dim..(id + 1) * self.dim]
    }

    /// Writes the unit vector of `ids` into `out` (length `dim`).
    fn pool(&self, ids: &[u32], out: &mut [f32]) {
        out.fill(0.0);
        for &id in ids {
            for (acc, v) in out.iter_mut().zip(self.row(id as usize)) {
                *acc += v;
            }
        }
        let mut norm = out.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm <= f32::MIN_POSITIVE {
            out.copy_from_slice(self.row(self.table.len() / self.dim - 1));
            norm = out.iter().map(|v| v * v).sum::<f32>().sqrt();
        }
        if norm > f32::MIN_POSITIVE {
            out.iter_mut().for_each(|v| *v /= norm);
        }
    }

    /// Row-major `(texts.len(), dim)` unit vectors.
    pub fn encode_batch<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<f32>> {
        let mut out = vec![0.0f32; texts.len() * self.dim];
        for (text, slot) in texts.iter().zip(out.chunks_exact_mut(self.dim)) {
            let ids = self.tokenizer.encode(text.as_ref(), true)?;
            self.pool(&ids, slot);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenize::tests::minilm;

    const VOCAB: usize = 30522;

    /// A 2-wide table: "hello" (7592) points along x, "world" (2088) along y, the empty row
    /// along -x, every other row zero.
    fn table() -> Vec<f32> {
        let mut table = vec![0.0f32; (VOCAB + 1) * 2];
        table[7592 * 2] = 3.0;
        table[2088 * 2 + 1] = 1.0;
        table[VOCAB * 2] = -2.0;
        table
    }

    #[test]
    fn a_text_is_the_normalised_sum_of_its_rows() {
        let encoder = StaticEncoder::new(&minilm(), (256, Keep::Head), table(), 2).unwrap();
        let got = encoder
            .encode_batch(&["hello", "hello world world world world", "", "[SEP]"])
            .unwrap();
        let expected = [1.0, 0.0, 0.6, 0.8, -1.0, 0.0, -1.0, 0.0];
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-6, "{got:?}");
        }
    }

    #[test]
    fn the_window_bounds_the_tokens_read() {
        let encoder = StaticEncoder::new(&minilm(), (3, Keep::Tail), table(), 2).unwrap();
        let got = encoder.encode_batch(&["hello world"]).unwrap();
        assert_eq!(got, vec![0.0, 1.0]);
    }

    #[test]
    fn a_table_of_the_wrong_size_or_with_nan_is_refused() {
        let short = StaticEncoder::new(&minilm(), (8, Keep::Head), vec![0.0; VOCAB * 2], 2);
        assert!(matches!(short.err(), Some(Error::Dimension { .. })));
        let mut bad = table();
        bad[5] = f32::NAN;
        let nan = StaticEncoder::new(&minilm(), (8, Keep::Head), bad, 2)
            .err()
            .unwrap();
        assert!(nan.to_string().contains("row 2"), "{nan}");
    }
}
