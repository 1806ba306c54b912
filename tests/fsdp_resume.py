"""Run by tests/test_distributed.py under `torchrun --nproc_per_node 2`: a sharded (FSDP) run paused half way, checkpointed and
resumed from the files, for the L1 crosscoder, BatchTopK and a dedicated-feature crosscoder (DFC); the half-way checkpoints are kept in OUT_DIR/ARCH-half. Usage: python -m torch.distributed.run ... fsdp_resume.py OUT_DIR"""
import shutil, sys
from pathlib import Path
import torch, torch.distributed as dist
from torch.distributed.tensor import DTensor
from crosscoder_nb.crosscoder import CrossCoder, CrossCoderConfig
from crosscoder_nb.distributed import exit_rank
from crosscoder_nb.trainer import TrainConfig, Trainer, synthetic_activations, tensor_batches

B, STEPS = 64, 24
ARCHS = {'l1': {}, 'batchtopk': {'activation': 'batchtopk', 'k': 4},
         'dfc': {'activation': 'batchtopk', 'k': 4, 'n_shared': 20, 'k_shared': 1, 'n_exclusive': [10, 10]}}

def setup(arch: str, rank: int = 0, world: int = 1):
    "The same run in any number of processes: a crosscoder, this rank's share of each batch, the config."
    torch.manual_seed(0)
    cc = CrossCoder(CrossCoderConfig(d_model=32, n_models=2, d_latent=200, **ARCHS[arch]))   # 200 latents: shards of 100
    x = synthetic_activations(B * 8, seed=1)
    cfg = TrainConfig(batch_size=B, n_steps=STEPS, lr=1e-3, log_every=4, precision='float32', parallel='fsdp')
    return cc, lambda: tensor_batches(x, B, seed=2, rank=rank, world=world), cfg

if __name__ == '__main__':
    out = Path(sys.argv[1]); dist.init_process_group('gloo')
    rank, world = dist.get_rank(), dist.get_world_size()
    for arch in ARCHS:
        cc, batches, cfg = setup(arch, rank, world)
        t = Trainer(cc, batches(), cfg, out / arch)
        local = {n: tuple(p.to_local().shape) for n, p in cc.named_parameters() if isinstance(p, DTensor)}
        assert local['W_enc'] == (2, 32, 100) and local['W_dec'] == (100, 2, 32) and local['b_enc'] == (100,), local   # half of each
        t.train(n_steps=STEPS // 2, progress=False)   # pauses; the checkpoint is written
        if rank == 0: shutil.copytree(out / arch, out / f'{arch}-half')   # for a single process to resume too
        dist.barrier()
        t = Trainer.resume(out / arch, batches())   # a new crosscoder and optimizer, from the files
        assert isinstance(t.cc.W_enc, DTensor) and isinstance(next(iter(t.opt.state.values()))['exp_avg'], DTensor)
        res = t.train(progress=False)
        assert res['steps'] == STEPS, res
    dist.barrier(); dist.destroy_process_group()
    exit_rank(0)   # without the interpreter's teardown, where gloo's threads can abort the process
