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
//!
//! # What a load checks
//!
//! Before anything proportional to the file is read or allocated: the magic bytes, the version,
//! that the announced payload length is exactly what the file holds, the configuration (so the
//! dimension is at most [`crate::config::MAX_DIM`]), and that the announced number of models
//! (at most [`MAX_MODELS`]) fits the payload's length. Then the checksum, and every field as a
//! caller's input: names of 1 to [`MAX_MODEL_NAME_BYTES`] bytes of UTF-8, no name twice,
//! profiles and priors as `add_model` checks them, every number finite, and what the learner
//! keeps true of each arm's matrices ([`crate::bounds`], checked in O(d²), as cheap as reading
//! them; a stored matrix is one triangle, so symmetric by construction), the count of updates
//! since the last refactorisation below `refactor_every`, the sum of weights non-negative.
//! Observation and completion counts may be anything: they saturate at 2⁶⁴ − 1 rather than
//! wrap. Each loaded arm gets a fresh generation.
//!
//! # Temporary files
//!
//! A save's temporary file is named `<target>.tmp-<pid>-<n>` and held under an exclusive
//! advisory lock (`flock`) while it is written. A crash leaves the file but not the lock (the
//! kernel drops a dead process's locks), so the next save of the same target removes every
//! `<target>.tmp-*` sibling whose lock it can take: a crashed writer's, never a live one's.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::arm::{ArmLedger, ArmStats, LengthSystem};
use crate::bounds::{check_gram, check_gram_inverse};
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

pub use crate::policy::{MAX_MODELS, MAX_MODEL_NAME_BYTES};

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

/// The fixed header: magic, a version this build reads, and a payload length that makes the
/// whole file exactly `total_len` bytes. Returns the version and the payload length.
fn check_header(header: &[u8], total_len: u64) -> std::result::Result<(u32, u64), String> {
    if header.len() < MAGIC.len() || &header[..MAGIC.len()] != MAGIC {
        return Err("not a mixllm policy file (bad magic bytes)".to_string());
    }
    if header.len() < HEADER_LEN {
        return Err("truncated header".to_string());
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if !(OLDEST_VERSION..=VERSION).contains(&version) {
        return Err(format!(
            "format version {version} is not supported (this build reads versions \
             {OLDEST_VERSION} to {VERSION})"
        ));
    }
    let payload_len = u64::from_le_bytes(header[12..20].try_into().expect("8 bytes"));
    let expected_total = (HEADER_LEN as u64)
        .checked_add(payload_len)
        .and_then(|n| n.checked_add(4));
    if expected_total != Some(total_len) {
        return Err(format!(
            "truncated or padded: the header announces {payload_len} payload bytes, the file has \
             {total_len} bytes in all"
        ));
    }
    Ok((version, payload_len))
}

/// Bytes of the payload before the first model: the configuration and the number of models.
fn prefix_len(version: u32) -> usize {
    let mut fields = 1 + 4 + 1 + 1 + 1;
    if version >= 2 {
        fields += 1;
    }
    if version >= 4 {
        fields += 1;
    }
    8 * fields
}

/// The smallest and the largest number of bytes one model takes in format `version` at `dim`.
fn model_len_range(version: u32, dim: usize) -> (u64, u64) {
    let dim = dim as u64;
    let packed = dim * (dim + 1) / 2;
    let vector = 8 + 8 * dim;
    let matrix = 8 + 8 * packed;
    // Profile (6), priors (2), observations and weight sum (2), updates, mean service and
    // completed (3), then each version's additions.
    let mut scalars = 6 + 2 + 2 + 3;
    if version >= 2 {
        scalars += 1;
    }
    if version >= 3 {
        scalars += 2;
    }
    if version >= 4 {
        scalars += 1;
    }
    let fixed = 8 * scalars + 2 * matrix + 4 * vector + 8;
    let own_length = if version >= 2 { 2 * matrix } else { 0 };
    (fixed + 1, fixed + MAX_MODEL_NAME_BYTES as u64 + own_length)
}

/// Reads the configuration and the number of models, and checks that number against
/// [`MAX_MODELS`] and the payload's `payload_len` bytes, before any model is read.
fn read_prefix(
    d: &mut Decoder<'_>,
    version: u32,
    payload_len: u64,
    expected_dim: Option<usize>,
) -> std::result::Result<(PolicyConfig, u64), String> {
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
    if n_models > MAX_MODELS as u64 {
        return Err(format!(
            "the file announces {n_models} models, more than the limit of {MAX_MODELS}"
        ));
    }
    let (least, most) = model_len_range(version, dim);
    let models_len = payload_len - prefix_len(version) as u64;
    if models_len < n_models * least || models_len > n_models * most {
        return Err(format!(
            "{n_models} models of dimension {dim} cannot take the {models_len} bytes the \
             payload has for them"
        ));
    }
    Ok((config, n_models))
}

/// Parses a saved policy. `expected_dim`, when given, must match the file's.
pub fn from_bytes(
    bytes: &[u8],
    expected_dim: Option<usize>,
) -> std::result::Result<Policy, String> {
    let (version, payload_len) = check_header(bytes, bytes.len() as u64)?;
    if payload_len < prefix_len(version) as u64 {
        return Err("truncated: the payload is shorter than a configuration".to_string());
    }
    let body_end = bytes.len() - 4;
    let stored_crc = u32::from_le_bytes(bytes[body_end..].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[..body_end]) != stored_crc {
        return Err("checksum mismatch: the file is corrupt".to_string());
    }
    let mut d = Decoder {
        buf: &bytes[HEADER_LEN..body_end],
    };
    let (config, n_models) = read_prefix(&mut d, version, payload_len, expected_dim)?;
    let mut slots: Vec<Arc<ArmSlot>> = Vec::with_capacity(n_models as usize);
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
    let (name, profile, priors) = read_identity(d)?;
    let observations = d.u64()?;
    let weight_sum = d.finite("weight_sum")?;
    if weight_sum < 0.0 {
        return Err(format!("{name:?}: negative weight sum {weight_sum}"));
    }
    let named = |e: String| format!("{name:?}: {e}");
    let a_inv = layout.from_packed(&d.finite_f64s("A inverse", packed_len)?);
    check_gram_inverse("A inverse", layout, &a_inv, config.ridge).map_err(named)?;
    let theta_quality = d.finite_f64s("quality head", dim)?;
    let theta_log_length = d.finite_f64s("length head", dim)?;
    let a = layout.from_packed(&d.finite_f64s("A", packed_len)?);
    check_gram("A", layout, &a, config.ridge).map_err(named)?;
    let b_quality = d.finite_f64s("quality targets", dim)?;
    let b_log_length = d.finite_f64s("length targets", dim)?;
    let length = read_length_system(d, config, version).map_err(named)?;
    let stats = ArmStats {
        observations,
        weight_sum,
        a_inv,
        theta_quality,
        theta_log_length,
    };
    let ledger = ArmLedger {
        ridge: config.ridge,
        length_ridge: config.length_ridge,
        a,
        b_quality,
        b_log_length,
        length,
        updates_since_refactor: d.u64()?,
    };
    if ledger.updates_since_refactor >= config.refactor_every {
        return Err(format!(
            "{name:?}: {} updates since the last refactorisation, but refactor_every is {}",
            ledger.updates_since_refactor, config.refactor_every
        ));
    }
    let live = read_live_stats(d, version).map_err(named)?;
    Ok(ArmSlot::new(name, priors, profile, stats, ledger, live))
}

/// A slot's model name, profile and priors, each checked.
fn read_identity<'a>(
    d: &mut Decoder<'a>,
) -> std::result::Result<(&'a str, ModelProfile, Priors), String> {
    let name_bytes = d.bytes(MAX_MODEL_NAME_BYTES)?;
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
    Ok((name, profile, priors))
}

/// The length head's own matrices, when the slot has them; refuses a slot without them whose
/// configuration gives the length head a ridge of its own.
fn read_length_system(
    d: &mut Decoder<'_>,
    config: &PolicyConfig,
    version: u32,
) -> std::result::Result<Option<LengthSystem>, String> {
    let layout = SymLayout::new(config.dim);
    let packed_len = config.dim * (config.dim + 1) / 2;
    // Version 1's length head always shared the quality head's matrices.
    let length = match if version >= 2 { d.u64()? } else { 0 } {
        0 => None,
        1 => {
            let own_a = layout.from_packed(&d.finite_f64s("length A", packed_len)?);
            check_gram("length A", layout, &own_a, config.length_ridge)?;
            let own_a_inv = layout.from_packed(&d.finite_f64s("length A inverse", packed_len)?);
            check_gram_inverse("length A inverse", layout, &own_a_inv, config.length_ridge)?;
            Some(LengthSystem {
                a: own_a,
                a_inv: own_a_inv,
            })
        }
        flag => return Err(format!("invalid length-system flag {flag}")),
    };
    if length.is_none() && config.length_ridge != config.ridge {
        return Err(format!(
            "the length head shares the quality head's matrix A, but length_ridge {} differs \
             from ridge {}",
            config.length_ridge, config.ridge
        ));
    }
    Ok(length)
}

/// A slot's live service-time statistics (the fields each format version added).
fn read_live_stats(d: &mut Decoder<'_>, version: u32) -> std::result::Result<LiveStats, String> {
    let mean_service = d.f64()?;
    let mean_service_s = if mean_service.is_nan() {
        None
    } else if mean_service.is_finite() && mean_service >= 0.0 {
        Some(mean_service)
    } else {
        return Err(format!("invalid mean service time {mean_service}"));
    };
    let completed = d.u64()?;
    let service_means_s = if version >= 3 {
        match (d.f64()?, d.f64()?) {
            (p, o) if p.is_nan() && o.is_nan() => None,
            (p, o) if p.is_finite() && o.is_finite() && p >= 0.0 && o >= 0.0 => Some((p, o)),
            (p, o) => {
                return Err(format!(
                    "invalid service averages {p} (predicted) and {o} (observed)"
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
            mse => return Err(format!("invalid service error {mse} (s²)")),
        }
    } else {
        None
    };
    Ok(LiveStats::restored(
        mean_service_s,
        completed,
        service_means_s,
        service_mse_s2,
    ))
}

/// Writes the policy to `path` atomically (temporary file, fsync, rename, fsync of the folder),
/// first removing the temporary files crashed saves of `path` left (see the module docs).
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
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::InvalidValue(format!("{} is not a file path", path.display())))?;
    let mut tmp_prefix = file_name.to_os_string();
    tmp_prefix.push(".tmp-");
    remove_stale_temporaries(&dir, &tmp_prefix);
    let (tmp, mut f) = locked_temporary(&dir, &tmp_prefix).map_err(io("cannot create", &dir))?;
    let written = (|| {
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

/// A new temporary file `<prefix><pid>-<n>` in `dir`, created and then locked exclusively. A
/// cleaner may take a fresh file's lock first, between the two steps, and remove it: the file
/// the lock is taken on must still be the one at the path, else another name is tried.
fn locked_temporary(dir: &Path, prefix: &OsStr) -> std::io::Result<(PathBuf, fs::File)> {
    loop {
        let mut name = prefix.to_os_string();
        name.push(format!("{}-{}", std::process::id(), unique_suffix()));
        let tmp = dir.join(name);
        let f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.lock()?;
        if same_file(&f, &tmp) {
            return Ok((tmp, f));
        }
    }
}

/// Whether `path` still names the file open as `f`.
fn same_file(f: &fs::File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (f.metadata(), fs::symlink_metadata(path)) {
            (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = f;
        path.exists()
    }
}

/// Removes the files in `dir` named `<prefix>…` whose exclusive lock can be taken: temporary
/// files of saves that died. A live save holds its file's lock until the file is renamed, so
/// its file is left alone. Best effort: a file that cannot be opened or removed stays.
fn remove_stale_temporaries(dir: &Path, prefix: &OsStr) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let prefix = prefix.as_encoded_bytes();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.as_encoded_bytes().starts_with(prefix) {
            continue;
        }
        let path = entry.path();
        // Never follow a link: only the regular files a save creates are candidates.
        if !fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_file()) {
            continue;
        }
        let Ok(f) = fs::OpenOptions::new().write(true).open(&path) else {
            continue;
        };
        // The lock is held across the removal, and released when `f` is dropped after it.
        if f.try_lock().is_ok() && same_file(&f, &path) {
            let _ = fs::remove_file(&path);
        }
    }
}

/// Reads a policy saved by [`save`]. The header is checked against the file's length, and the
/// configuration and model count against the payload's, before the rest is read: a file that is
/// not a policy is refused after reading a few dozen bytes, and nothing larger than the file is
/// ever allocated.
pub fn load(path: &Path, expected_dim: Option<usize>) -> Result<Policy> {
    let io = |action: &'static str| {
        move |source| Error::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    };
    let refuse = |reason: String| Error::StateFile {
        path: path.to_path_buf(),
        reason,
    };
    // Checked before opening too: opening a FIFO waits for a writer, and a device such as
    // /dev/zero never ends.
    if !fs::metadata(path).map_err(io("cannot read"))?.is_file() {
        return Err(refuse("not a regular file".to_string()));
    }
    let mut f = fs::File::open(path).map_err(io("cannot read"))?;
    let meta = f.metadata().map_err(io("cannot read"))?;
    if !meta.is_file() {
        return Err(refuse("not a regular file".to_string()));
    }
    let total_len = meta.len();
    let mut header = [0u8; HEADER_LEN];
    let got = read_up_to(&mut f, &mut header).map_err(io("cannot read"))?;
    let (version, payload_len) = check_header(&header[..got], total_len).map_err(refuse)?;
    let prefix = prefix_len(version);
    if payload_len < prefix as u64 {
        return Err(refuse(
            "truncated: the payload is shorter than a configuration".to_string(),
        ));
    }
    let mut bytes = header[..got].to_vec();
    bytes.resize(HEADER_LEN + prefix, 0);
    f.read_exact(&mut bytes[HEADER_LEN..])
        .map_err(io("cannot read"))?;
    let mut d = Decoder {
        buf: &bytes[HEADER_LEN..],
    };
    // Found before the checksum can be verified, which takes the whole file: say so, since a
    // damaged file reads as an out-of-range configuration here.
    read_prefix(&mut d, version, payload_len, expected_dim)
        .map_err(|e| refuse(format!("{e} (found before the checksum was verified)")))?;
    // The length was checked against the file's, and bounded by what its models can take.
    let total = usize::try_from(total_len)
        .map_err(|_| refuse("too large for this machine's memory".to_string()))?;
    bytes
        .try_reserve_exact(total - bytes.len())
        .map_err(|_| refuse(format!("{total} bytes do not fit in memory")))?;
    let rest = (total - bytes.len()) as u64;
    let read = f
        .take(rest)
        .read_to_end(&mut bytes)
        .map_err(io("cannot read"))?;
    if read as u64 != rest {
        return Err(refuse("the file shrank while it was read".to_string()));
    }
    from_bytes(&bytes, expected_dim).map_err(refuse)
}

/// Fills as much of `buf` as the reader has, returning how much that is.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
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

    /// The offset of model "m"'s statistics (observations, then the weight sum and A⁻¹) in
    /// [`one_model`]'s bytes: after the header, the configuration, the count, the name (a u64
    /// length and one byte), the profile (6 values) and the priors (2).
    fn stats_at() -> usize {
        HEADER_LEN + prefix_len(VERSION) + 8 + 1 + 6 * 8 + 2 * 8
    }

    fn set_f64(bytes: &mut [u8], at: usize, value: f64) {
        bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
    }

    #[test]
    fn inverses_outside_their_bounds_are_rejected() {
        // The packed 2×2 A⁻¹ (entries (0,0), (0,1), (1,1)) follows the observations, the
        // weight sum and its length; the ridge is 1.
        let a_inv = stats_at() + 8 + 8 + 8;
        for (entry, value, expected) in [
            (0, -1e150, "diagonal entry 0"),
            (2, -1e-3, "diagonal entry 1"),
            (0, 2.0, "outside [0, 1/ridge"),
            (1, -1e150, "entry (0, 1)"),
            (1, 1.5, "entry (0, 1)"),
        ] {
            let (mut bytes, _) = one_model(false);
            set_f64(&mut bytes, a_inv + 8 * entry, value);
            let error = from_bytes(&with_crc(bytes), None).unwrap_err();
            assert!(
                error.contains("A inverse") && error.contains(expected),
                "{error}"
            );
        }
        // Rounding's worth of excess is tolerated.
        let (mut bytes, _) = one_model(false);
        set_f64(&mut bytes, a_inv, 1.0 + 1e-9);
        assert!(from_bytes(&with_crc(bytes), None).is_ok());
    }

    #[test]
    fn matrices_below_the_ridge_or_not_semi_definite_are_rejected() {
        // A follows A⁻¹ (u64 + 3 values) and the two heads (u64 + 2 values each).
        let a = stats_at() + 8 + 8 + (8 + 3 * 8) + 2 * (8 + 2 * 8) + 8;
        for (entry, value, expected) in [(0, 0.5, "below the ridge"), (1, 1.5, "entry (0, 1)")] {
            let (mut bytes, _) = one_model(false);
            set_f64(&mut bytes, a + 8 * entry, value);
            let error = from_bytes(&with_crc(bytes), None).unwrap_err();
            assert!(
                error.contains("\"m\": A ") && error.contains(expected),
                "{error}"
            );
        }
        // The length head's own A, with its own ridge of 3.
        let (mut bytes, flag) = one_model(true);
        set_f64(&mut bytes, flag + 8 + 8, 2.0);
        let error = from_bytes(&with_crc(bytes), None).unwrap_err();
        assert!(error.contains("length A diagonal entry 0"), "{error}");
    }

    #[test]
    fn negative_weight_sums_and_overdue_refactorisations_are_rejected() {
        let (mut bytes, _) = one_model(false);
        set_f64(&mut bytes, stats_at() + 8, -1.0);
        let error = from_bytes(&with_crc(bytes), None).unwrap_err();
        assert!(error.contains("negative weight sum"), "{error}");
        // The update count follows the flag; refactor_every is 1000.
        let (mut bytes, flag) = one_model(false);
        bytes[flag + 8..flag + 16].copy_from_slice(&1000u64.to_le_bytes());
        let error = from_bytes(&with_crc(bytes), None).unwrap_err();
        assert!(
            error.contains("1000 updates since the last refactorisation"),
            "{error}"
        );
    }

    #[test]
    fn counts_at_the_top_saturate_rather_than_wrap() {
        let (mut bytes, flag) = one_model(false);
        bytes[stats_at()..stats_at() + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        // completed follows the update count and the mean service time.
        let completed = flag + 8 + 8 + 8;
        bytes[completed..completed + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        let policy = from_bytes(&with_crc(bytes), None).unwrap();
        observe(&policy, 0..3);
        policy.begin("m", Some(1.0), 0.0).unwrap();
        policy.end("m", Some(1.0), Some(1.0), 1.0).unwrap();
        let report = policy.report("m").unwrap();
        assert_eq!(report.stats.observations, u64::MAX);
        assert_eq!(report.completed, u64::MAX);
    }

    #[test]
    fn a_model_count_beyond_the_limit_or_the_payload_is_refused_up_front() {
        let (bytes, _) = one_model(false);
        let count = HEADER_LEN + prefix_len(VERSION) - 8;
        for (n, expected) in [
            (MAX_MODELS as u64 + 1, "more than the limit of 4096"),
            (2, "2 models of dimension 2 cannot take"),
            (0, "0 models of dimension 2 cannot take"),
        ] {
            let mut bad = bytes.clone();
            bad[count..count + 8].copy_from_slice(&n.to_le_bytes());
            let error = from_bytes(&with_crc(bad), None).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn a_file_is_refused_on_its_header_without_reading_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        // A sparse file of 1 TiB: reading it would take hours, allocating it would fail.
        let path = dir.path().join("huge.bin");
        let f = fs::File::create(&path).unwrap();
        f.set_len(1 << 40).unwrap();
        let error = load(&path, None).unwrap_err().to_string();
        assert!(error.contains("bad magic bytes"), "{error}");
        // The right magic and version, but a length that is not the file's.
        let mut header = Vec::from(&MAGIC[..]);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&100u64.to_le_bytes());
        let mut f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all(&header).unwrap();
        let error = load(&path, None).unwrap_err().to_string();
        assert!(error.contains("announces 100 payload bytes"), "{error}");
        // A consistent length, but a dimension beyond the limit.
        let payload = (1u64 << 40) - HEADER_LEN as u64 - 4;
        header[12..20].copy_from_slice(&payload.to_le_bytes());
        header.extend_from_slice(&1_000_000u64.to_le_bytes());
        let mut f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all(&header).unwrap();
        let error = load(&path, None).unwrap_err().to_string();
        assert!(error.contains("dim must be in 1..=4096"), "{error}");
        // A valid configuration announcing one model: far too few bytes for 1 TiB.
        let config = to_bytes(&Policy::new(PolicyConfig::new(2)).unwrap());
        let mut prefix = config[..HEADER_LEN + prefix_len(VERSION)].to_vec();
        prefix[12..20].copy_from_slice(&payload.to_le_bytes());
        let n = prefix.len() - 8;
        prefix[n..].copy_from_slice(&1u64.to_le_bytes());
        let mut f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all(&prefix).unwrap();
        let error = load(&path, None).unwrap_err().to_string();
        assert!(
            error.contains("1 models of dimension 2 cannot take"),
            "{error}"
        );
    }

    #[test]
    fn only_a_regular_file_is_a_state_file() {
        // A folder, and a device that never ends. (A FIFO, which would wait for a writer, is
        // tested from Python: spawning mkfifo here would hand the other tests' open files,
        // and their locks, to a child for an instant.)
        let dir = tempfile::tempdir().unwrap();
        for path in [dir.path(), Path::new("/dev/zero")] {
            let error = load(path, None).unwrap_err();
            assert!(
                matches!(error, Error::StateFile { .. }) && error.to_string().contains("regular"),
                "{error}"
            );
        }
    }

    #[test]
    fn a_save_removes_crashed_temporaries_but_not_live_ones() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("policy.bin");
        let stale = dir.path().join("policy.bin.tmp-1-0");
        let live = dir.path().join("policy.bin.tmp-2-0");
        let other = dir.path().join("other.bin.tmp-3-0");
        for path in [&stale, &live, &other] {
            fs::write(path, b"partial").unwrap();
        }
        // A lock taken through another open file description conflicts, as another
        // process's would.
        let writer = fs::File::open(&live).unwrap();
        writer.lock().unwrap();
        let policy = Policy::new(PolicyConfig::new(2)).unwrap();
        save(&policy, &target).unwrap();
        assert!(!stale.exists());
        assert!(live.exists() && other.exists());
        drop(writer);
        save(&policy, &target).unwrap();
        assert!(!live.exists() && other.exists());
        assert!(load(&target, Some(2)).is_ok());
    }
}
