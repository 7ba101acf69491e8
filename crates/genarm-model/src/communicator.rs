//! Collectives between tensor-parallel ranks: the `Communicator` trait, a single-rank no-op, an
//! in-process group of OS threads for CPU ranks, and NCCL under the `cuda` feature.

use std::sync::{Arc, Condvar, Mutex};

use candle_core::Tensor;

use crate::error::{ModelError, Result};

/// Collective operations among the ranks of one tensor-parallel group. Every rank must call the
/// same collectives in the same order with tensors of the same shape.
pub trait Communicator: Send + Sync {
    /// This rank, in `0..world_size()`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world_size(&self) -> usize;
    /// Element-wise sum over ranks; every rank receives the same result.
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor>;
    /// Concatenation of every rank's tensor along `dim`, in rank order.
    fn all_gather(&self, t: &Tensor, dim: usize) -> Result<Tensor>;
    /// Rank 0's tensor, on every rank (`t` is ignored on the other ranks but gives the shape).
    fn broadcast(&self, t: &Tensor) -> Result<Tensor>;
    /// Wakes every rank blocked in a collective with an error, after a rank failed: the others
    /// would otherwise wait forever for it.
    fn abort(&self);
}

/// The trivial group of one rank.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleRank;

impl Communicator for SingleRank {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn all_gather(&self, t: &Tensor, _dim: usize) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn broadcast(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn abort(&self) {}
}

struct GroupState {
    slots: Vec<Option<Tensor>>,
    arrived: usize,
    generation: u64,
    aborted: bool,
}

struct Group {
    world: usize,
    state: Mutex<GroupState>,
    cv: Condvar,
}

/// One rank of an in-process group. Ranks are plain OS threads that block on a condition
/// variable, never inside rayon's pool, so any number of ranks works on any number of cores.
pub struct LocalCommunicator {
    rank: usize,
    group: Arc<Group>,
}

impl LocalCommunicator {
    /// The `world` ranks of a new group, rank `i` at index `i`.
    pub fn group(world: usize) -> Vec<LocalCommunicator> {
        let group = Arc::new(Group {
            world,
            state: Mutex::new(GroupState {
                slots: vec![None; world],
                arrived: 0,
                generation: 0,
                aborted: false,
            }),
            cv: Condvar::new(),
        });
        (0..world).map(|rank| LocalCommunicator { rank, group: group.clone() }).collect()
    }

    fn aborted(&self) -> ModelError {
        ModelError::Rank { rank: self.rank, reason: "another rank of the group failed".into() }
    }

    /// Waits until every rank has arrived at this point.
    fn barrier(&self) -> Result<()> {
        let g = &self.group;
        let mut s = g.state.lock().expect("group lock poisoned");
        if s.aborted {
            return Err(self.aborted());
        }
        let gen = s.generation;
        s.arrived += 1;
        if s.arrived == g.world {
            s.arrived = 0;
            s.generation += 1;
            g.cv.notify_all();
            return Ok(());
        }
        while s.generation == gen && !s.aborted {
            s = g.cv.wait(s).expect("group lock poisoned");
        }
        if s.aborted {
            return Err(self.aborted());
        }
        Ok(())
    }

    /// Publishes `t`, waits for all ranks, lets `f` read every rank's tensor, then waits again so
    /// that no rank overwrites its slot while another still reads it.
    fn exchange<R>(&self, t: &Tensor, f: impl FnOnce(&[Tensor]) -> Result<R>) -> Result<R> {
        self.group.state.lock().expect("group lock poisoned").slots[self.rank] = Some(t.clone());
        self.barrier()?;
        let all: Vec<Tensor> = {
            let s = self.group.state.lock().expect("group lock poisoned");
            s.slots.iter().map(|t| t.clone().expect("every rank published")).collect()
        };
        let out = f(&all);
        self.barrier()?;
        out
    }
}

impl Communicator for LocalCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.group.world
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        // Every rank sums in rank order, so all ranks get bit-identical results.
        self.exchange(t, |all| {
            let mut acc = all[0].clone();
            for x in &all[1..] {
                acc = (acc + x)?;
            }
            Ok(acc)
        })
    }
    fn all_gather(&self, t: &Tensor, dim: usize) -> Result<Tensor> {
        self.exchange(t, |all| Ok(Tensor::cat(all, dim)?))
    }
    fn broadcast(&self, t: &Tensor) -> Result<Tensor> {
        self.exchange(t, |all| Ok(all[0].clone()))
    }
    fn abort(&self) {
        let mut s = self.group.state.lock().expect("group lock poisoned");
        s.aborted = true;
        self.group.cv.notify_all();
    }
}

#[cfg(feature = "cuda")]
pub use nccl::NcclCommunicator;

#[cfg(feature = "cuda")]
mod nccl {
    //! NCCL collectives over candle CUDA tensors (rank = device ordinal).

    use candle_core::{CudaStorage, DType, Device, Shape, Storage, Tensor};
    use cudarc::nccl::safe::{Comm, Id, ReduceOp};

    use super::Communicator;
    use crate::error::{ModelError, Result};

    /// One rank of an NCCL group.
    pub struct NcclCommunicator {
        comm: Comm,
    }

    // SAFETY-free justification: `Comm` is used from the one rank thread that owns it; the
    // engine never shares a rank's communicator across threads.
    unsafe impl Send for NcclCommunicator {}
    unsafe impl Sync for NcclCommunicator {}

    impl NcclCommunicator {
        /// A new NCCL id, made by rank 0 and handed to the other ranks.
        pub fn new_id() -> Result<Id> {
            Id::new().map_err(|e| ModelError::Rank { rank: 0, reason: format!("ncclGetUniqueId: {e:?}") })
        }

        /// Joins the group `id` as `rank` of `world` on `device` (a CUDA device).
        pub fn join(device: &Device, rank: usize, world: usize, id: Id) -> Result<Self> {
            let Device::Cuda(cuda) = device else {
                return Err(ModelError::Rank { rank, reason: "NCCL needs a CUDA device".into() });
            };
            let comm = Comm::from_rank(cuda.cuda_stream(), rank, world, id)
                .map_err(|e| ModelError::Rank { rank, reason: format!("ncclCommInitRank: {e:?}") })?;
            Ok(Self { comm })
        }

        fn err(&self, what: &str, e: impl std::fmt::Debug) -> ModelError {
            ModelError::Rank { rank: self.comm.rank(), reason: format!("{what}: {e:?}") }
        }

        fn collective(
            &self,
            t: &Tensor,
            out_shape: Shape,
            what: &str,
            op: impl FnOnce(
                &Comm,
                &cudarc::driver::CudaSlice<f32>,
                &mut cudarc::driver::CudaSlice<f32>,
            ) -> std::result::Result<(), cudarc::nccl::result::NcclError>,
        ) -> Result<Tensor> {
            // The result goes on the caller's device handle: the rank's model tensors live on a
            // different candle `Device` of the same GPU than the one the group was joined on, and
            // candle refuses to combine tensors of different handles.
            let Device::Cuda(cuda) = t.device() else {
                return Err(self.err(what, "tensor is not on a CUDA device"));
            };
            let cuda = cuda.clone();
            let t = t.to_dtype(DType::F32)?.contiguous()?;
            let (storage, layout) = t.storage_and_layout();
            let Storage::Cuda(src) = &*storage else {
                return Err(self.err(what, "tensor is not on a CUDA device"));
            };
            let src = src.as_cuda_slice::<f32>()?;
            let src = src.slice(layout.start_offset()..layout.start_offset() + layout.shape().elem_count());
            let stream = cuda.cuda_stream();
            let mut dst = stream.alloc_zeros::<f32>(out_shape.elem_count()).map_err(|e| self.err(what, e))?;
            let src_owned = stream.clone_dtod(&src).map_err(|e| self.err(what, e))?;
            op(&self.comm, &src_owned, &mut dst).map_err(|e| self.err(what, e))?;
            debug_assert_eq!(dst.len(), out_shape.elem_count());
            let storage = CudaStorage::wrap_cuda_slice(dst, cuda.clone());
            Ok(Tensor::from_storage(
                Storage::Cuda(storage),
                out_shape,
                candle_core::op::BackpropOp::none(),
                false,
            ))
        }
    }

    impl Communicator for NcclCommunicator {
        fn rank(&self) -> usize {
            self.comm.rank()
        }
        fn world_size(&self) -> usize {
            self.comm.world_size()
        }
        fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
            let dtype = t.dtype();
            let out = self.collective(t, t.shape().clone(), "all_reduce", |c, s, d| {
                c.all_reduce(s, d, &ReduceOp::Sum).map(|_| ())
            })?;
            Ok(out.to_dtype(dtype)?)
        }
        fn all_gather(&self, t: &Tensor, dim: usize) -> Result<Tensor> {
            // NCCL gathers along the outermost dimension: move `dim` there and back.
            let dtype = t.dtype();
            let moved = t.transpose(0, dim)?.contiguous()?;
            let mut dims = moved.dims().to_vec();
            dims[0] *= self.world_size();
            let out = self.collective(&moved, Shape::from(dims), "all_gather", |c, s, d| {
                c.all_gather(s, d).map(|_| ())
            })?;
            Ok(out.transpose(0, dim)?.contiguous()?.to_dtype(dtype)?)
        }
        fn broadcast(&self, t: &Tensor) -> Result<Tensor> {
            let dtype = t.dtype();
            let out = self.collective(t, t.shape().clone(), "broadcast", |c, s, d| {
                c.broadcast(Some(s), d, 0).map(|_| ())
            })?;
            Ok(out.to_dtype(dtype)?)
        }
        fn abort(&self) {
            // cudarc exposes no safe ncclCommAbort, and aborting a communicator that another
            // thread is blocked in is undefined in NCCL. A failed GPU rank is fatal for the
            // worker process instead: the engine reports the error and the worker exits.
            tracing::error!(rank = self.comm.rank(), "NCCL rank failed; the group cannot recover");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn local_group_collectives_with_more_ranks_than_cores() {
        let world = 4;
        let handles: Vec<_> = LocalCommunicator::group(world)
            .into_iter()
            .map(|c| {
                std::thread::spawn(move || {
                    let r = c.rank() as f32;
                    let t = Tensor::new(&[r, 10.0 * r], &Device::Cpu).unwrap();
                    let mut out = Vec::new();
                    for _ in 0..50 {
                        let sum = c.all_reduce_sum(&t).unwrap().to_vec1::<f32>().unwrap();
                        let gathered = c.all_gather(&t, 0).unwrap().to_vec1::<f32>().unwrap();
                        let b = c.broadcast(&(&t + 1.0).unwrap()).unwrap().to_vec1::<f32>().unwrap();
                        out = vec![sum, gathered, b];
                    }
                    out
                })
            })
            .collect();
        for h in handles {
            let out = h.join().unwrap();
            assert_eq!(out[0], vec![6.0, 60.0]);
            assert_eq!(out[1], vec![0.0, 0.0, 1.0, 10.0, 2.0, 20.0, 3.0, 30.0]);
            assert_eq!(out[2], vec![1.0, 1.0]);
        }
    }

    #[test]
    fn abort_wakes_waiting_ranks() {
        let mut comms = LocalCommunicator::group(2);
        let c1 = comms.pop().unwrap();
        let c0 = comms.pop().unwrap();
        let group = c1.group.clone();
        let waiter =
            std::thread::spawn(move || c0.all_reduce_sum(&Tensor::new(&[1f32], &Device::Cpu).unwrap()));
        // Abort only once rank 0 really waits in the barrier (it counts itself as arrived and
        // blocks on the condition variable under the same lock), so that the abort is what wakes
        // it; aborting earlier would test the check on entry instead.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while group.state.lock().unwrap().arrived == 0 {
            assert!(std::time::Instant::now() < deadline, "rank 0 never reached the barrier");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        c1.abort();
        assert!(waiter.join().unwrap().is_err());
    }
}
