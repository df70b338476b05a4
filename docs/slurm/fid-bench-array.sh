#!/usr/bin/env bash
# The paper's Table 2 (src/dualerase/presets/bench/imagenet.yaml) as a SLURM job array: 8 jobs over one shared output folder,
# each on one node with 8 GPUs (accelerate launch: data parallel inside the cell). Claims (bench-dit/claims/) keep
# the jobs apart, a job that dies leaves its cell to the next job that passes it (same host: at once; another host:
# after --claim-timeout hours without progress), and the job that finishes last writes results.md.
# Submit: sbatch docs/slurm/fid-bench-array.sh   Tables at any time: fid-bench imagenet --output bench-dit --aggregate
#SBATCH --job-name=fid-bench
#SBATCH --array=0-7
#SBATCH --nodes=1
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=64
#SBATCH --time=48:00:00
#SBATCH --output=logs/fid-bench-%A-%a.log
set -euo pipefail
. .venv/bin/activate
# Prepare the shared caches once before the array (latents, FID reference statistics), so that jobs do not race to
# build them: e.g. run `fid-reference` and one cell first.
# Every job walks the whole grid and takes the next unclaimed cell (a free load balance); with
# --shard "${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT}" each job would keep to a fixed share instead.
accelerate launch --num_processes 8 --mixed_precision bf16 -m dualerase fid-bench imagenet --output bench-dit \
    --set data.path=/data/imagenet/train --set eval.fid_reference=refs/no-table2 \
    --set compute.mixed_precision=bf16 --set erase.batch_size=8
