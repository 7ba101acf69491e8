//! `RowBank`: the simulated model's logit rows — recorded from real models (or, for protocol
//! tests, synthetic) — mapped onto the simulated vocabulary and packed for the wire once per
//! (row, dtype, length), so that answering a step costs the simulator next to nothing.
//!
//! Mapping a row recorded over `Vr` ids onto `V` ids: ids below `min(V, Vr)` keep their recorded
//! logit; when `V > Vr`, each extra id copies the logit of a recorded id chosen by a fixed hash,
//! lowered by [`EXTRA_ID_SHIFT`] — a larger tokenizer's extra ids are rarer tokens, so the head,
//! entropy and top-k mass of the recorded distribution survive the mapping.
//!
//! For the sparse wire the bank certifies each mapped row once per (row, candidates, length) with
//! the real workers' [`certify_row`], so a simulated step answers as a real worker would at the
//! cost of a clone.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use genarm_fusion::rng::SplitMix64;
use genarm_fusion::{certify_row, pack, OwnedRowCertificate, WireDtype};
use genarm_proto::prost::bytes::Bytes;
use genarm_proto::v1::seq_result::Outcome;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

/// How much lower (in logits, natural log) an extra id of a mapped row is than the recorded id it
/// copies: e^-3 ≈ 5% as likely.
pub const EXTRA_ID_SHIFT: f32 = 3.0;

/// Why a rows file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RowsError {
    /// The file cannot be read.
    #[error("cannot read the rows file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a safetensors file, or lacks the tensor, or it has the wrong shape.
    #[error("the rows file {path}: {message}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// A bank of logit rows for one simulated model.
#[derive(Debug)]
pub struct RowBank {
    /// Rows over the recorded vocabulary.
    rows: Vec<Vec<f32>>,
    /// The simulated vocabulary size.
    vocab: usize,
    /// Packed mapped rows by (row, dtype, logits length).
    packed: Mutex<HashMap<(usize, WireDtype, usize), Bytes>>,
    /// Sparse-wire answers by (row, candidates, logits length): the certificate, or `None` for a
    /// row `certify_row` refuses (answered with the full f32 row, as a real worker does).
    certified: Mutex<HashMap<(usize, usize, usize), Option<genarm_proto::v1::SparseLogits>>>,
}

impl RowBank {
    /// A bank over `rows` (each over the same recorded vocabulary), mapped onto `vocab` ids.
    pub fn new(rows: Vec<Vec<f32>>, vocab: usize) -> Result<Self, String> {
        let width = rows.first().map(Vec::len).ok_or("no rows")?;
        if width == 0 || rows.iter().any(|r| r.len() != width) {
            return Err("the rows must be non-empty and of one width".into());
        }
        if vocab == 0 {
            return Err("the simulated vocabulary is empty".into());
        }
        Ok(RowBank { rows, vocab, packed: Mutex::new(HashMap::new()), certified: Mutex::new(HashMap::new()) })
    }

    /// Reads tensor `tensor` (shape `[rows, recorded vocab]`, F32 or F16) of the safetensors
    /// file `path`.
    pub fn load(path: &Path, tensor: &str, vocab: usize) -> Result<Self, RowsError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| RowsError::Read { path: shown.clone(), source })?;
        let format = |message: String| RowsError::Format { path: shown.clone(), message };
        let st =
            SafeTensors::deserialize(&bytes).map_err(|e| format(format!("not a safetensors file: {e}")))?;
        let view = st.tensor(tensor).map_err(|_| {
            let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
            names.sort();
            format(format!(
                "has no tensor `{tensor}` (it has {}); pick one with --rows-tensor",
                names.join(", ")
            ))
        })?;
        let [n, width] = view.shape() else {
            return Err(format(format!("tensor `{tensor}` has shape {:?}, not [rows, vocab]", view.shape())));
        };
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => {
                view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            }
            Dtype::F16 => {
                view.data().chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
            }
            other => return Err(format(format!("tensor `{tensor}` is {other:?}; write F32 or F16 rows"))),
        };
        let rows: Vec<Vec<f32>> = values.chunks_exact(*width).take(*n).map(<[f32]>::to_vec).collect();
        RowBank::new(rows, vocab).map_err(|e| format(format!("tensor `{tensor}`: {e}")))
    }

    /// Writes named banks of rows (`[rows, recorded vocab]` each) to a safetensors file, as F16.
    pub fn write(path: &Path, tensors: &[(&str, &[Vec<f32>])]) -> std::io::Result<()> {
        let mut data: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
        for (name, rows) in tensors {
            let width = rows.first().map(Vec::len).unwrap_or(0);
            let bytes: Vec<u8> =
                rows.iter().flatten().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
            data.push((name.to_string(), bytes, vec![rows.len(), width]));
        }
        let views: Vec<(String, TensorView<'_>)> = data
            .iter()
            .map(|(name, bytes, shape)| {
                let view = TensorView::new(Dtype::F16, shape.clone(), bytes)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                Ok((name.clone(), view))
            })
            .collect::<std::io::Result<_>>()?;
        let bytes = safetensors::serialize(views, None).map_err(|e| std::io::Error::other(e.to_string()))?;
        std::fs::write(path, bytes)
    }

    /// `n` seeded Zipf-shaped rows over `width` ids (a random permutation of `-1.1 · ln(rank)`
    /// plus noise) — for protocol tests only. `variant` perturbs them, so that the banks of two
    /// models built from one seed disagree the way a base and an ARM do, a little.
    pub fn synthetic(n: usize, width: usize, vocab: usize, seed: u64, variant: u64) -> Result<Self, String> {
        let mut rows = Vec::with_capacity(n);
        for r in 0..n as u64 {
            let mut base = SplitMix64::new(seed ^ r.wrapping_mul(0xA24B_AED4_963E_E407));
            let mut noise =
                SplitMix64::new(seed ^ variant.wrapping_add(1).wrapping_mul(0x9FB2_1C65_1E98_DF25) ^ r);
            let mut row: Vec<f32> = (0..width).map(|rank| -1.1 * ((rank + 1) as f32).ln()).collect();
            for i in (1..width).rev() {
                let j = (base.next_u64() % (i as u64 + 1)) as usize;
                row.swap(i, j);
            }
            if variant != 0 {
                for x in &mut row {
                    *x += (unit(noise.next_u64()) - 0.5) as f32 * 2.0;
                }
            }
            rows.push(row);
        }
        RowBank::new(rows, vocab)
    }

    /// How many rows the bank holds.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the bank is empty (never, once built).
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The row a sequence whose tokens hash to `history` gets under `seed`: the same on every
    /// simulated model of a cluster started with one seed.
    pub fn index(&self, seed: u64, history: u64) -> usize {
        let mut h = SplitMix64::new(seed ^ history.wrapping_mul(0xD6E8_FEB8_6659_FD93));
        (h.next_u64() % self.rows.len() as u64) as usize
    }

    /// Row `index` mapped onto the simulated vocabulary (see the module docs).
    pub fn mapped(&self, index: usize) -> Vec<f32> {
        let row = &self.rows[index % self.rows.len()];
        let width = row.len();
        let mut out = Vec::with_capacity(self.vocab);
        out.extend_from_slice(&row[..width.min(self.vocab)]);
        for id in width..self.vocab {
            let src = (SplitMix64::new(id as u64).next_u64() % width as u64) as usize;
            out.push(row[src] - EXTRA_ID_SHIFT);
        }
        out
    }

    /// The value of mapped row `index` at `id` (−∞ past the vocabulary): one entry of
    /// [`RowBank::mapped`], without building the row.
    pub fn value(&self, index: usize, id: usize) -> f32 {
        let row = &self.rows[index % self.rows.len()];
        let width = row.len();
        if id < width.min(self.vocab) {
            row[id]
        } else if id < self.vocab {
            row[(SplitMix64::new(id as u64).next_u64() % width as u64) as usize] - EXTRA_ID_SHIFT
        } else {
            f32::NEG_INFINITY
        }
    }

    /// Row `index` mapped, cut to `len` logits (padded with −∞ past the vocabulary) and packed as
    /// `dtype`; computed once, then shared.
    pub fn packed(&self, index: usize, dtype: WireDtype, len: usize) -> Bytes {
        let index = index % self.rows.len();
        let key = (index, dtype, len);
        if let Some(b) = self.packed.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return b.clone();
        }
        let mut row = self.mapped(index);
        row.resize(len, f32::NEG_INFINITY);
        let mut out = Vec::new();
        pack(&row, dtype, &mut out);
        let bytes = Bytes::from(out);
        self.packed.lock().unwrap_or_else(|e| e.into_inner()).insert(key, bytes.clone());
        bytes
    }
}

impl RowBank {
    /// The sparse-wire answer for row `index` cut to `len` logits with `candidates` candidates
    /// (capped at `len`): its certificate, or — for a row that cannot be certified (NaN, +∞, all
    /// masked) — the full row packed as `fallback`, as `genarm-worker` answers. Computed once,
    /// then cloned.
    pub fn sparse(&self, index: usize, candidates: usize, len: usize, fallback: WireDtype) -> Outcome {
        let index = index % self.rows.len();
        let candidates = candidates.clamp(1, len.max(1));
        let key = (index, candidates, len);
        let cached = self.certified.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
        let certificate = match cached {
            Some(c) => c,
            None => {
                let mut row = self.mapped(index);
                row.resize(len, f32::NEG_INFINITY);
                let mut cert = OwnedRowCertificate::default();
                let c = certify_row(&row, candidates, &mut cert)
                    .ok()
                    .map(|()| genarm_worker::step::sparse_logits(&cert));
                self.certified.lock().unwrap_or_else(|e| e.into_inner()).insert(key, c.clone());
                c
            }
        };
        match certificate {
            Some(c) => Outcome::Sparse(c),
            None => Outcome::Logits(self.packed(index, fallback, len)),
        }
    }

    /// The refined `FetchRows` answer for row `index`: [`RowBank::sparse`] with `candidates`, plus
    /// the exact values at `extras` that are not candidates (as
    /// [`genarm_fusion::OwnedRowCertificate::add_extras`] adds them on a real worker).
    pub fn refined(
        &self,
        index: usize,
        candidates: usize,
        len: usize,
        extras: &[u32],
        fallback: WireDtype,
    ) -> Outcome {
        let mut outcome = self.sparse(index, candidates, len, fallback);
        if let Outcome::Sparse(c) = &mut outcome {
            let mut taken = c.ids.clone();
            taken.sort_unstable();
            for &id in extras {
                if let Err(at) = taken.binary_search(&id) {
                    taken.insert(at, id);
                    c.extra_ids.push(id);
                    c.extra_logits.push(if (id as usize) < len {
                        self.value(index, id as usize)
                    } else {
                        f32::NEG_INFINITY
                    });
                }
            }
        }
        outcome
    }
}

/// A uniform draw in [0, 1) from 53 random bits.
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_survive_a_file_round_trip_and_map_onto_a_larger_vocabulary() {
        let bank = RowBank::synthetic(3, 100, 100, 7, 0).unwrap();
        let rows: Vec<Vec<f32>> = (0..3).map(|i| bank.mapped(i)).collect();
        for (i, row) in rows.iter().enumerate() {
            for id in [0, 42, 99, 100] {
                let want = row.get(id).copied().unwrap_or(f32::NEG_INFINITY);
                assert_eq!(bank.value(i, id).to_bits(), want.to_bits(), "row {i} id {id}");
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.safetensors");
        RowBank::write(&path, &[("base", &rows)]).unwrap();
        let back = RowBank::load(&path, "base", 250).unwrap();
        assert_eq!(back.len(), 3);
        let m = back.mapped(1);
        assert_eq!(m.len(), 250);
        assert_eq!(back.value(1, 200).to_bits(), m[200].to_bits(), "an extra id's value");
        // A refined answer is the real workers' refined certificate of the mapped row.
        let mut want = OwnedRowCertificate::default();
        certify_row(&m, 8, &mut want).unwrap();
        want.add_extras(&m, &[200, want.ids[0], 3]).unwrap();
        let got = back.refined(1, 8, 250, &[200, want.ids[0], 3], WireDtype::F32);
        assert_eq!(got, Outcome::Sparse(genarm_worker::step::sparse_logits(&want)));
        for (a, b) in m[..100].iter().zip(&rows[1]) {
            assert!((a - b).abs() <= 1e-2 * b.abs().max(1.0), "{a} vs {b}");
        }
        // The head stays the recorded head: every extra id is below the recorded max.
        let max = m[..100].iter().cloned().fold(f32::MIN, f32::max);
        assert!(m[100..].iter().all(|&x| x <= max - EXTRA_ID_SHIFT + 1e-3));
        let err = RowBank::load(&path, "arm.helpful", 250).unwrap_err().to_string();
        assert!(
            err.contains("arm.helpful") && err.contains("base") && err.contains("--rows-tensor"),
            "{err}"
        );
    }

    #[test]
    fn a_sequence_gets_the_same_row_on_every_model_and_rows_are_deterministic() {
        let base = RowBank::synthetic(50, 64, 64, 1, 0).unwrap();
        let arm = RowBank::synthetic(50, 64, 64, 1, 3).unwrap();
        assert_eq!(base.index(9, 123), arm.index(9, 123));
        let spread: std::collections::HashSet<usize> = (0..200).map(|h| base.index(9, h)).collect();
        assert!(spread.len() > 30, "histories should spread over the rows: {}", spread.len());
        assert_eq!(base.mapped(5), RowBank::synthetic(50, 64, 64, 1, 0).unwrap().mapped(5));
        assert_ne!(base.mapped(5), arm.mapped(5), "a variant must disagree with the base");
        let packed = base.packed(5, WireDtype::F32, 70);
        assert_eq!(packed.len(), 70 * 4);
        assert_eq!(packed.as_ptr(), base.packed(5, WireDtype::F32, 70).as_ptr(), "packed once, then shared");
    }

    #[test]
    fn a_sparse_answer_is_the_real_workers_certificate_of_the_mapped_row() {
        let bank = RowBank::synthetic(4, 64, 200, 3, 0).unwrap();
        let Outcome::Sparse(s) = bank.sparse(2, 8, 150, WireDtype::F32) else { panic!("certified") };
        let mut row = bank.mapped(2);
        row.truncate(150);
        let mut cert = OwnedRowCertificate::default();
        certify_row(&row, 8, &mut cert).unwrap();
        assert_eq!(s, genarm_worker::step::sparse_logits(&cert));
        assert_eq!(s.ids.len(), 8);
        assert!(s.ids.iter().all(|&id| id < 150), "candidates stay inside logits_len");
        // Candidates are capped at the row's length.
        let Outcome::Sparse(all) = bank.sparse(2, 500, 150, WireDtype::F32) else { panic!() };
        assert_eq!(all.ids.len(), 150);
        assert_eq!(all.outside_max, f32::NEG_INFINITY);
        // A row that cannot be certified (NaN) is answered in full.
        let nan = RowBank::new(vec![vec![1.0, f32::NAN, 0.5]], 3).unwrap();
        let Outcome::Logits(b) = nan.sparse(0, 2, 3, WireDtype::F32) else {
            panic!("a NaN row goes out in full")
        };
        assert_eq!(b.len(), 12);
    }
}
