//! Saving and loading a whole policy.
//!
//! Format (little-endian), version 4:
//!
//! ```text
//! magic   8 bytes  "MIXLLMP\0"
//! version u32
//! length  u64      payload bytes
//! payload          config, then each model (name, profile, priors, snapshot, ledger, live stats);
//!                  symmetric matrices as their upper triangle, row by row, d(d+1)/2 values
//! crc32   u32      of everything before it
//! ```
//!
//! Version 4 added `tau_margin_sd` and, per model, the moving average of the service
//! estimates' squared error behind each latency estimate's spread; files of versions 1 to 3
//! load with a margin of 0 and no error yet, deciding as they did when saved.
//! Version 3 added, per model, the moving averages of predicted and observed service behind
//! the service ratio, so a restarted service keeps scaling its estimates as it had learned to;
//! files of versions 1 and 2 load with none (a ratio of 1 until requests finish).
//! Version 2 added `length_ridge` and, per model, the length head's own matrices when it has
//! them. Version 1 files, written before the length head had its own ridge system, are still
//! read: their length head shares the quality head's matrices, with `length_ridge` equal to
//! `ridge`. (An arm that then learned from feedback without a length holds the targets imputed
//! for it, its current prediction; from now on such feedback gives the length head its own
//! matrices instead.)
//!
//! No pickle, no code runs on load: every field is read with bounds checks and validated as if it
//! came from a caller. A save writes a temporary file beside the target, syncs it, and renames it
//! over the target, so a crash leaves either the old file or the new one, never a torn one.
//! Requests in flight are not saved (they belong to the process that made them).

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use crate::arm::{ArmLedger, ArmStats, LengthSystem};
use crate::config::PolicyConfig;
use crate::error::{Error, Result};
use crate::kernels::SymLayout;
use crate::live::LiveStats;
use crate::policy::{report_of, ArmSlot, Policy};
use crate::profile::{ModelProfile, Priors};

const MAGIC: &[u8; 8] = b"MIXLLMP\0";
const VERSION: u32 = 4;
/// The oldest format version this build reads.
const OLDEST_VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 8;
const MAX_NAME_LEN: usize = 4096;

/// Serialises the policy. Each model's snapshot and ledger are read under its writer lock, so
/// they are consistent; decisions are not blocked.
pub fn to_bytes(policy: &Policy) -> Vec<u8> {
    encode(policy, VERSION)
}

/// The policy in format `version`. Only [`VERSION`] is written outside tests; versions 1 (no
/// `length_ridge`, no length matrices: only faithful while the two heads share theirs), 2
/// (no service averages) and 3 (no latency margin, no service error) are written by the tests
/// that check older files still load.
fn encode(policy: &Policy, version: u32) -> Vec<u8> {
    let mut out = Encoder::default();
    let c = policy.config();
    out.u64(c.dim as u64);
    for v in [c.alpha, c.beta, c.ridge, c.tau_s] {
        out.f64(v);
    }
    out.u64(c.refactor_every);
    out.f64(c.service_time_smoothing);
    if version >= 2 {
        out.f64(c.length_ridge);
    }
    if version >= 4 {
        out.f64(c.tau_margin_sd);
    }
    let slots = policy.slots();
    out.u64(slots.len() as u64);
    for slot in &slots {
        let r = report_of(slot);
        out.bytes(r.name.as_bytes());
        let p = &r.profile;
        for v in [p.price_in, p.price_out, p.fee, p.ttft_s, p.tokens_per_s] {
            out.f64(v);
        }
        out.u64(u64::from(p.concurrency));
        out.f64(r.priors.quality);
        out.f64(r.priors.output_tokens);
        out.u64(r.stats.observations);
        out.f64(r.stats.weight_sum);
        let layout = SymLayout::new(c.dim);
        out.f64s(&layout.to_packed(&r.stats.a_inv));
        out.f64s(&r.stats.theta_quality);
        out.f64s(&r.stats.theta_log_length);
        out.f64s(&layout.to_packed(&r.ledger.a));
        out.f64s(&r.ledger.b_quality);
        out.f64s(&r.ledger.b_log_length);
        // The length head's own matrices, when it has them (flag 1), else nothing (flag 0).
        match &r.ledger.length {
            _ if version < 2 => {}
            None => out.u64(0),
            Some(own) => {
                out.u64(1);
                out.f64s(&layout.to_packed(&own.a));
                out.f64s(&layout.to_packed(&own.a_inv));
            }
        }
        out.u64(r.ledger.updates_since_refactor);
        out.f64(r.mean_service_s.unwrap_or(f64::NAN));
        out.u64(r.completed);
        if version >= 3 {
            let (predicted, observed) = r.service_means_s.unwrap_or((f64::NAN, f64::NAN));
            out.f64(predicted);
            out.f64(observed);
        }
        if version >= 4 {
            out.f64(r.service_mse_s2.unwrap_or(f64::NAN));
        }
    }
    let payload = out.buf;
    let mut file = Vec::with_capacity(HEADER_LEN + payload.len() + 4);
    file.extend_from_slice(MAGIC);
    file.extend_from_slice(&version.to_le_bytes());
    file.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    file.extend_from_slice(&payload);
    let crc = crc32fast::hash(&file);
    file.extend_from_slice(&crc.to_le_bytes());
    file
}

/// Parses a saved policy. `expected_dim`, when given, must match the file's.
pub fn from_bytes(
    bytes: &[u8],
    expected_dim: Option<usize>,
) -> std::result::Result<Policy, String> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a mixllm policy file (bad magic bytes)".to_string());
    }
    if bytes.len() < HEADER_LEN {
        return Err("truncated header".to_string());
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if !(OLDEST_VERSION..=VERSION).contains(&version) {
        return Err(format!(
            "format version {version} is not supported (this build reads versions \
             {OLDEST_VERSION} to {VERSION})"
        ));
    }
    let payload_len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let expected_total = (HEADER_LEN as u64)
        .checked_add(payload_len)
        .and_then(|n| n.checked_add(4));
    if expected_total != Some(bytes.len() as u64) {
        return Err(format!(
            "truncated or padded: the header announces {payload_len} payload bytes, the file has \
             {} bytes in all",
            bytes.len()
        ));
    }
    let body_end = bytes.len() - 4;
    let stored_crc = u32::from_le_bytes(bytes[body_end..].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[..body_end]) != stored_crc {
        return Err("checksum mismatch: the file is corrupt".to_string());
    }
    let mut d = Decoder {
        buf: &bytes[HEADER_LEN..body_end],
    };
    let dim = usize::try_from(d.u64()?).map_err(|_| "dimension out of range".to_string())?;
    let mut config = PolicyConfig::new(dim);
    config.alpha = d.f64()?;
    config.beta = d.f64()?;
    config.ridge = d.f64()?;
    config.tau_s = d.f64()?;
    config.refactor_every = d.u64()?;
    config.service_time_smoothing = d.f64()?;
    config.length_ridge = if version >= 2 { d.f64()? } else { config.ridge };
    // Older files decided on the estimate alone.
    config.tau_margin_sd = if version >= 4 { d.f64()? } else { 0.0 };
    config
        .validate()
        .map_err(|e| format!("invalid configuration: {e}"))?;
    if let Some(expected) = expected_dim {
        if expected != dim {
            return Err(format!(
                "the file holds a policy of dimension {dim}, expected {expected}"
            ));
        }
    }
    let n_models = d.u64()?;
    let mut slots: Vec<Arc<ArmSlot>> = Vec::new();
    for model in 0..n_models {
        let slot =
            read_slot(&mut d, &config, version).map_err(|e| format!("model #{model}: {e}"))?;
        if slots.iter().any(|s| s.name == slot.name) {
            return Err(format!("model {:?} appears twice", slot.name));
        }
        slots.push(Arc::new(slot));
    }
    if !d.buf.is_empty() {
        return Err(format!(
            "{} unexpected bytes after the last model",
            d.buf.len()
        ));
    }
    Ok(Policy::from_parts(config, slots))
}

fn read_slot(
    d: &mut Decoder<'_>,
    config: &PolicyConfig,
    version: u32,
) -> std::result::Result<ArmSlot, String> {
    let dim = config.dim;
    let layout = SymLayout::new(dim);
    let packed_len = dim * (dim + 1) / 2;
    let name_bytes = d.bytes(MAX_NAME_LEN)?;
    let name =
        std::str::from_utf8(name_bytes).map_err(|_| "model name is not UTF-8".to_string())?;
    if name.is_empty() {
        return Err("empty model name".to_string());
    }
    let profile = ModelProfile {
        price_in: d.f64()?,
        price_out: d.f64()?,
        fee: d.f64()?,
        ttft_s: d.f64()?,
        tokens_per_s: d.f64()?,
        concurrency: u32::try_from(d.u64()?).map_err(|_| "concurrency out of range".to_string())?,
    };
    profile.validate().map_err(|e| format!("{name:?}: {e}"))?;
    let priors = Priors {
        quality: d.f64()?,
        output_tokens: d.f64()?,
    };
    priors.validate().map_err(|e| format!("{name:?}: {e}"))?;
    let stats = ArmStats {
        observations: d.u64()?,
        weight_sum: d.finite("weight_sum")?,
        a_inv: layout.from_packed(&d.finite_f64s("A inverse", packed_len)?),
        theta_quality: d.finite_f64s("quality head", dim)?,
        theta_log_length: d.finite_f64s("length head", dim)?,
    };
    let a = layout.from_packed(&d.finite_f64s("A", packed_len)?);
    let b_quality = d.finite_f64s("quality targets", dim)?;
    let b_log_length = d.finite_f64s("length targets", dim)?;
    // Version 1's length head always shared the quality head's matrices.
    let length = match if version >= 2 { d.u64()? } else { 0 } {
        0 => None,
        1 => Some(LengthSystem {
            a: layout.from_packed(&d.finite_f64s("length A", packed_len)?),
            a_inv: layout.from_packed(&d.finite_f64s("length A inverse", packed_len)?),
        }),
        flag => return Err(format!("{name:?}: invalid length-system flag {flag}")),
    };
    if length.is_none() && config.length_ridge != config.ridge {
        return Err(format!(
            "{name:?}: the length head shares the quality head's matrix A, but length_ridge \
             {} differs from ridge {}",
            config.length_ridge, config.ridge
        ));
    }
    let ledger = ArmLedger {
        a,
        b_quality,
        b_log_length,
        length,
        updates_since_refactor: d.u64()?,
    };
    let mean_service = d.f64()?;
    let mean_service_s = if mean_service.is_nan() {
        None
    } else if mean_service.is_finite() && mean_service >= 0.0 {
        Some(mean_service)
    } else {
        return Err(format!(
            "{name:?}: invalid mean service time {mean_service}"
        ));
    };
    let completed = d.u64()?;
    let service_means_s = if version >= 3 {
        match (d.f64()?, d.f64()?) {
            (p, o) if p.is_nan() && o.is_nan() => None,
            (p, o) if p.is_finite() && o.is_finite() && p >= 0.0 && o >= 0.0 => Some((p, o)),
            (p, o) => {
                return Err(format!(
                    "{name:?}: invalid service averages {p} (predicted) and {o} (observed)"
                ))
            }
        }
    } else {
        None
    };
    let service_mse_s2 = if version >= 4 {
        match d.f64()? {
            mse if mse.is_nan() => None,
            mse if mse.is_finite() && mse >= 0.0 => Some(mse),
            mse => return Err(format!("{name:?}: invalid service error {mse} (s²)")),
        }
    } else {
        None
    };
    Ok(ArmSlot::new(
        name,
        priors,
        profile,
        stats,
        ledger,
        LiveStats::restored(mean_service_s, completed, service_means_s, service_mse_s2),
    ))
}

/// Writes the policy to `path` atomically (temporary file, fsync, rename, fsync of the folder).
pub fn save(policy: &Policy, path: &Path) -> Result<()> {
    let bytes = to_bytes(policy);
    let io = |action: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| Error::Io {
            action,
            path: p,
            source,
        }
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::InvalidValue(format!("{} is not a file path", path.display())))?;
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(format!(".tmp-{}-{}", std::process::id(), unique_suffix()));
    let tmp = dir.join(tmp_name);
    let written = (|| {
        let mut f = fs::File::create(&tmp).map_err(io("cannot create", &tmp))?;
        f.write_all(&bytes).map_err(io("cannot write", &tmp))?;
        f.sync_all().map_err(io("cannot sync", &tmp))?;
        fs::rename(&tmp, path).map_err(io("cannot rename into place", path))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
        return written;
    }
    // Make the rename itself durable; not every filesystem allows syncing a folder.
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads a policy saved by [`save`].
pub fn load(path: &Path, expected_dim: Option<usize>) -> Result<Policy> {
    let bytes = fs::read(path).map_err(|source| Error::Io {
        action: "cannot read",
        path: path.to_path_buf(),
        source,
    })?;
    from_bytes(&bytes, expected_dim).map_err(|reason| Error::StateFile {
        path: path.to_path_buf(),
        reason,
    })
}

fn unique_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

#[derive(Default)]
struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn f64s(&mut self, vs: &[f64]) {
        self.u64(vs.len() as u64);
        for v in vs {
            self.f64(*v);
        }
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.buf.extend_from_slice(b);
    }
}

struct Decoder<'a> {
    buf: &'a [u8],
}

impl<'a> Decoder<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err("unexpected end of data".to_string());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn f64(&mut self) -> std::result::Result<f64, String> {
        Ok(f64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn finite(&mut self, what: &str) -> std::result::Result<f64, String> {
        let v = self.f64()?;
        if v.is_finite() {
            Ok(v)
        } else {
            Err(format!("{what} is not finite"))
        }
    }
    fn finite_f64s(
        &mut self,
        what: &str,
        expected: usize,
    ) -> std::result::Result<Vec<f64>, String> {
        let len = self.u64()?;
        if len != expected as u64 {
            return Err(format!("{what} has {len} values, expected {expected}"));
        }
        let raw = self.take(expected * 8)?;
        let values: Vec<f64> = raw
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        if values.iter().any(|v| !v.is_finite()) {
            return Err(format!("{what} holds non-finite values"));
        }
        Ok(values)
    }
    fn bytes(&mut self, max: usize) -> std::result::Result<&'a [u8], String> {
        let len = self.u64()?;
        if len > max as u64 {
            return Err(format!(
                "a name of {len} bytes is longer than the limit of {max}"
            ));
        }
        self.take(len as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arm::Observation;

    fn observe(policy: &Policy, rows: std::ops::Range<usize>) {
        let dim = policy.config().dim;
        for i in rows {
            let x: Vec<f64> = (0..dim)
                .map(|k| ((i * dim + k) as f64 * 0.37).sin())
                .collect();
            let obs = Observation {
                x: &x,
                quality: (i % 3) as f64 / 2.0,
                output_tokens: Some(1.0 + 40.0 * (i % 5) as f64),
                weight: 1.0,
            };
            policy.update("m", &obs).unwrap();
        }
    }

    #[test]
    fn version_1_files_load_and_continue_as_they_would_have() {
        // With every length seen and one ridge, the two heads' matrices coincide, which is
        // exactly the shared matrix version 1 kept.
        let config = PolicyConfig {
            ridge: 0.7,
            length_ridge: 0.7,
            refactor_every: 5,
            ..PolicyConfig::new(6)
        };
        let policy = Policy::new(config).unwrap();
        let profile = ModelProfile {
            price_in: 1.0,
            price_out: 2.0,
            fee: 0.0,
            ttft_s: 0.3,
            tokens_per_s: 40.0,
            concurrency: 2,
        };
        policy.add_model("m", profile, Priors::default()).unwrap();
        observe(&policy, 0..13);
        let old = from_bytes(&encode(&policy, 1), Some(6)).unwrap();
        assert_eq!(old.config(), policy.config());
        assert_eq!(to_bytes(&old), to_bytes(&policy));
        observe(&policy, 13..30);
        observe(&old, 13..30);
        assert_eq!(to_bytes(&old), to_bytes(&policy));
    }

    /// A cheap, slow model with `concurrency` slots.
    fn small_profile(concurrency: u32) -> ModelProfile {
        ModelProfile {
            price_in: 1.0,
            price_out: 1.0,
            fee: 0.0,
            ttft_s: 0.1,
            tokens_per_s: 10.0,
            concurrency,
        }
    }

    /// A one-model policy whose length head has its own matrices (`separate`) or not, as bytes,
    /// with the offset of the model's length-system flag.
    fn one_model(separate: bool) -> (Vec<u8>, usize) {
        let config = PolicyConfig {
            length_ridge: if separate { 3.0 } else { 1.0 },
            ..PolicyConfig::new(2)
        };
        let policy = Policy::new(config).unwrap();
        policy
            .add_model("m", small_profile(1), Priors::default())
            .unwrap();
        let bytes = to_bytes(&policy);
        // After the flag: (separate) two packed 2×2 matrices as u64 length + 3 values, then
        // updates (u64), mean service (f64), completed (u64), the two service averages (f64),
        // the service error (f64) and the crc (u32).
        let tail = if separate { 2 * (8 + 3 * 8) } else { 0 } + 8 + 8 + 8 + 8 + 8 + 8 + 4;
        (bytes.clone(), bytes.len() - tail - 8)
    }

    fn with_crc(mut bytes: Vec<u8>) -> Vec<u8> {
        let body = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    #[test]
    fn length_system_flags_are_checked() {
        for separate in [false, true] {
            let (bytes, at) = one_model(separate);
            let flag = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
            assert_eq!(flag, u64::from(separate));
            assert!(from_bytes(&bytes, None).is_ok());
            let mut bad = bytes.clone();
            bad[at..at + 8].copy_from_slice(&2u64.to_le_bytes());
            let error = from_bytes(&with_crc(bad), None).unwrap_err();
            assert!(error.contains("invalid length-system flag 2"), "{error}");
        }
        // length_ridge 3 with the flag saying "shared": a state no caller can build.
        let (bytes, at) = one_model(true);
        let mut shared = bytes[..at].to_vec();
        shared.extend_from_slice(&0u64.to_le_bytes());
        shared.extend_from_slice(&bytes[at + 8 + 2 * (8 + 3 * 8)..]);
        let payload = (shared.len() - HEADER_LEN - 4) as u64;
        shared[12..20].copy_from_slice(&payload.to_le_bytes());
        let error = from_bytes(&with_crc(shared), None).unwrap_err();
        assert!(
            error.contains("length_ridge 3 differs from ridge 1"),
            "{error}"
        );
        // A non-finite value in the length head's own inverse.
        let (bytes, at) = one_model(true);
        let mut bad = bytes.clone();
        let inverse_value = at + 8 + (8 + 3 * 8) + 8;
        bad[inverse_value..inverse_value + 8].copy_from_slice(&f64::NAN.to_le_bytes());
        let error = from_bytes(&with_crc(bad), None).unwrap_err();
        assert!(
            error.contains("length A inverse holds non-finite"),
            "{error}"
        );
    }

    /// A one-model policy whose requests have run 2.5 times as long as predicted (3 s over, which
    /// the service ratio corrects after the first), and that keeps one standard deviation of
    /// margin below τ.
    fn slow_served() -> Policy {
        let mut config = PolicyConfig::new(2);
        config.tau_margin_sd = 1.0;
        let policy = Policy::new(config).unwrap();
        policy
            .add_model("m", small_profile(2), Priors::default())
            .unwrap();
        for i in 0..4 {
            let now = f64::from(i) * 10.0;
            policy.begin("m", Some(2.0), now).unwrap();
            policy.end("m", Some(5.0), Some(2.0), now + 5.0).unwrap();
        }
        policy
    }

    #[test]
    fn the_service_ratio_survives_a_save() {
        let policy = slow_served();
        let before = policy.report("m").unwrap();
        assert!(
            (before.service_ratio() - 2.5).abs() < 1e-12,
            "{}",
            before.service_ratio()
        );
        let loaded = from_bytes(&to_bytes(&policy), Some(2)).unwrap();
        let after = loaded.report("m").unwrap();
        assert_eq!(after.service_means_s, before.service_means_s);
        assert_eq!(after.service_ratio(), before.service_ratio());
        // 9 s² for the first, then none: 9 · 0.9³ with the default smoothing of 0.1.
        let mse = before.service_mse_s2.unwrap();
        assert!((mse - 9.0 * 0.9f64.powi(3)).abs() < 1e-12, "{mse}");
        assert_eq!(after.service_mse_s2, before.service_mse_s2);
        assert_eq!(loaded.config().tau_margin_sd, 1.0);
        assert_eq!(after.in_flight, 0);
        assert_eq!(to_bytes(&loaded), to_bytes(&policy));
    }

    #[test]
    fn version_2_files_load_without_service_averages() {
        let policy = slow_served();
        let old = from_bytes(&encode(&policy, 2), Some(2)).unwrap();
        let report = old.report("m").unwrap();
        assert_eq!(report.service_means_s, None);
        assert_eq!(report.service_ratio(), 1.0);
        assert_eq!(
            report.mean_service_s,
            policy.report("m").unwrap().mean_service_s
        );
    }

    #[test]
    fn version_3_files_load_without_margin_or_service_error() {
        let policy = slow_served();
        let old = from_bytes(&encode(&policy, 3), Some(2)).unwrap();
        assert_eq!(old.config().tau_margin_sd, 0.0);
        let report = old.report("m").unwrap();
        assert_eq!(report.service_mse_s2, None);
        assert_eq!(
            report.service_means_s,
            policy.report("m").unwrap().service_means_s
        );
        // Without an error yet, the estimate has no spread, and without a margin it would not
        // matter: it decides as the same policy without a margin does.
        let x = [1.0, 0.0];
        let decision = old.decide(&x, 5.0, 0.2, 0.0).unwrap();
        assert_eq!(decision.assessments[0].latency_sd_s, 0.0);
        // The same policy saved now, its margin set to 0 in the file.
        let mut bytes = to_bytes(&policy);
        let margin_at = HEADER_LEN + 8 + 4 * 8 + 8 + 8 + 8;
        assert_eq!(bytes[margin_at..margin_at + 8], 1.0f64.to_le_bytes());
        bytes[margin_at..margin_at + 8].copy_from_slice(&0.0f64.to_le_bytes());
        let unmargined = from_bytes(&with_crc(bytes), Some(2)).unwrap();
        let expected = unmargined.decide(&x, 5.0, 0.2, 0.0).unwrap();
        assert_eq!(decision.index, expected.index);
        for (a, b) in decision.assessments.iter().zip(&expected.assessments) {
            assert_eq!(
                (a.latency_s, a.score, a.excluded),
                (b.latency_s, b.score, b.excluded)
            );
        }
    }

    #[test]
    fn invalid_service_errors_are_rejected() {
        let bytes = to_bytes(&slow_served());
        // The squared error is the last 8 bytes before the crc.
        let at = bytes.len() - 4 - 8;
        for mse in [-1.0, f64::INFINITY] {
            let mut bad = bytes.clone();
            bad[at..at + 8].copy_from_slice(&mse.to_le_bytes());
            let error = from_bytes(&with_crc(bad), None).unwrap_err();
            assert!(error.contains("invalid service error"), "{error}");
        }
    }

    #[test]
    fn invalid_service_averages_are_rejected() {
        let bytes = to_bytes(&slow_served());
        // The two averages are the 16 bytes before the squared error and the crc.
        let at = bytes.len() - 4 - 8 - 16;
        for (predicted, observed) in [(f64::NAN, 1.0), (-1.0, 1.0), (1.0, f64::INFINITY)] {
            let mut bad = bytes.clone();
            bad[at..at + 8].copy_from_slice(&predicted.to_le_bytes());
            bad[at + 8..at + 16].copy_from_slice(&observed.to_le_bytes());
            let error = from_bytes(&with_crc(bad), None).unwrap_err();
            assert!(error.contains("invalid service averages"), "{error}");
        }
    }

    #[test]
    fn unknown_versions_are_rejected_by_number() {
        let mut bytes = to_bytes(&Policy::new(PolicyConfig::new(2)).unwrap());
        for version in [0u32, VERSION + 1] {
            bytes[8..12].copy_from_slice(&version.to_le_bytes());
            let error = from_bytes(&bytes, None).unwrap_err();
            assert!(error.contains(&format!("version {version}")), "{error}");
        }
    }
}
