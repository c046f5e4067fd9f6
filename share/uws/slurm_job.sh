#!/bin/bash
# UWS session {job_id}: written by SlurmSpawner, run by sbatch as the workspace owner.
#SBATCH --job-name=uws-{job_id}
#SBATCH --output={job_dir}/slurm.out
#SBATCH --chdir={job_dir}
#SBATCH --nodes=1
{sbatch_options}
# The helper reads the job's secret on standard input; the file is readable by its owner only.
exec {helper_command} < {secret_file}
