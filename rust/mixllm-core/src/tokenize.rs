//! Text to token ids with a Hugging Face `tokenizer.json`, in the core so that neither the
//! encoders nor the token counts need the Python `tokenizers` package.
//!
//! A [`TextTokenizer`] never pads; it truncates only when built with a window, keeping the
//! window's first tokens ([`Keep::Head`]) or its last ones ([`Keep::Tail`]), special tokens
//! included in the window exactly as the Python package's `enable_truncation` counts them.
//! Texts of a batch are encoded one after another on the calling thread: the encoders call
//! from their own worker threads, and a thread pool of the tokenizer's own would compete with
//! them and could not survive a `fork`.

use std::path::{Path, PathBuf};

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{Error, Result};

/// Which end of a text longer than the window is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// The first tokens.
    Head,
    /// The last tokens.
    Tail,
}

/// A loaded `tokenizer.json`, padding off, truncation as configured. Read-only once built, so
/// threads may share it.
pub struct TextTokenizer {
    inner: Tokenizer,
    path: PathBuf,
}

impl TextTokenizer {
    /// Loads `path`; `window` is `(max_tokens, keep)` to truncate, or `None` to keep every
    /// token.
    pub fn from_file(path: &Path, window: Option<(usize, Keep)>) -> Result<Self> {
        let bad = |reason: String| Error::ModelFile {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            action: "cannot read tokenizer",
            path: path.to_path_buf(),
            source,
        })?;
        let mut inner = Tokenizer::from_bytes(&bytes)
            .map_err(|err| bad(format!("not a valid tokenizer.json: {err}")))?;
        inner.with_padding(None);
        let truncation = match window {
            None => None,
            Some((0, _)) => return Err(bad("the token window must be at least 1".into())),
            Some((max_length, keep)) => Some(TruncationParams {
                max_length,
                direction: match keep {
                    Keep::Head => TruncationDirection::Right,
                    Keep::Tail => TruncationDirection::Left,
                },
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }),
        };
        inner
            .with_truncation(truncation)
            .map_err(|err| bad(format!("cannot truncate as asked: {err}")))?;
        Ok(Self {
            inner,
            path: path.to_path_buf(),
        })
    }

    /// The file this tokenizer was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many ids the tokenizer can produce (its vocabulary and added tokens).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The ids of one text.
    pub fn encode(&self, text: &str, special_tokens: bool) -> Result<Vec<u32>> {
        self.inner
            .encode_fast(text, special_tokens)
            .map(|encoding| encoding.get_ids().to_vec())
            .map_err(|err| {
                Error::InvalidValue(format!(
                    "the tokenizer {} cannot encode a text: {err}",
                    self.path.display()
                ))
            })
    }

    /// The ids of each text, in order.
    pub fn encode_batch<S: AsRef<str>>(
        &self,
        texts: &[S],
        special_tokens: bool,
    ) -> Result<Vec<Vec<u32>>> {
        texts
            .iter()
            .map(|text| self.encode(text.as_ref(), special_tokens))
            .collect()
    }

    /// The token count of each text, in order.
    pub fn count_batch<S: AsRef<str>>(
        &self,
        texts: &[S],
        special_tokens: bool,
    ) -> Result<Vec<usize>> {
        texts
            .iter()
            .map(|text| Ok(self.encode(text.as_ref(), special_tokens)?.len()))
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn minilm() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../python/mixllm/encoders/encoder_files/all-MiniLM-L6-v2/tokenizer.json")
    }

    #[test]
    fn encodes_as_bert_does() {
        let tokenizer = TextTokenizer::from_file(&minilm(), None).unwrap();
        assert_eq!(tokenizer.vocab_size(), 30522);
        let ids = tokenizer.encode("Hello, world!", true).unwrap();
        assert_eq!(ids, vec![101, 7592, 1010, 2088, 999, 102]);
        assert_eq!(
            tokenizer.encode("Hello, world!", false).unwrap(),
            vec![7592, 1010, 2088, 999]
        );
        assert_eq!(tokenizer.encode("", true).unwrap(), vec![101, 102]);
        assert_eq!(
            tokenizer
                .count_batch(&["", "Hello, world!"], false)
                .unwrap(),
            vec![0, 4]
        );
    }

    #[test]
    fn truncates_keeping_the_head_or_the_tail_special_tokens_included() {
        let text = "one two three four five";
        let all = TextTokenizer::from_file(&minilm(), None).unwrap();
        let words = all.encode(text, false).unwrap();
        assert_eq!(words.len(), 5);
        let head = TextTokenizer::from_file(&minilm(), Some((4, Keep::Head))).unwrap();
        assert_eq!(
            head.encode(text, true).unwrap(),
            vec![101, words[0], words[1], 102]
        );
        let tail = TextTokenizer::from_file(&minilm(), Some((4, Keep::Tail))).unwrap();
        assert_eq!(
            tail.encode(text, true).unwrap(),
            vec![101, words[3], words[4], 102]
        );
    }

    #[test]
    fn a_bad_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        match TextTokenizer::from_file(&path, None) {
            Err(Error::Io { path: named, .. }) => assert_eq!(named, path),
            other => panic!("expected an Io error, got {:?}", other.err()),
        }
        std::fs::write(&path, b"{\"model\": 3}").unwrap();
        let err = TextTokenizer::from_file(&path, None).err().unwrap();
        assert!(matches!(err, Error::ModelFile { .. }));
        assert!(err.to_string().contains(&path.display().to_string()));
        let zero = TextTokenizer::from_file(&minilm(), Some((0, Keep::Head))).err();
        assert!(matches!(zero, Some(Error::ModelFile { .. })));
    }
}
