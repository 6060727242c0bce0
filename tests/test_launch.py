"""Launch scripts print the exact commands they would run (shell-quoted; parsed back here)."""
import shlex
import subprocess

from tests.conftest import REPO


def dry_run(script, *args):
  return subprocess.run(['bash', str(REPO / 'launch' / script), '--dry-run', *args],
                        capture_output=True, text=True, check=True).stdout


def test_tpu_vm_commands():
  common = ['--name=slt', '--zone=us-central2-b']
  assert dry_run('tpu_vm.sh', *common, '--accelerator=v4-32', 'create').split() == [
      'gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'slt', '--zone=us-central2-b',
      '--accelerator-type=v4-32', '--version=v2-alpha-tpuv5-lite']
  run = dry_run('tpu_vm.sh', *common, '--no-compile-check', 'run', '--',
                '--config=configs/gloss2text.py', '--workdir=gs://b/w')
  *ssh, remote = shlex.split(run)
  assert ssh == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'slt', '--zone=us-central2-b',
                 '--worker=all']
  assert remote.startswith('--command=cd ~/sltjax && nohup .venv/bin/python -m sltjax.main '
                           '--multihost --config=configs/gloss2text.py --workdir=gs://b/w')
  assert dry_run('tpu_vm.sh', *common, 'delete').split()[-1] == '--quiet'


def test_tpu_vm_compiles_the_job_for_the_slice_before_it_spends():
  common = ['--name=slt', '--zone=us-central2-b']
  job = ['--', '--config=configs/c2rl.py:pretrain', '--workdir=gs://b/w']
  check, create = dry_run('tpu_vm.sh', *common, '--accelerator=v5p-128', 'create',
                          *job).splitlines()
  assert shlex.split(check)[1:] == ['-m', 'sltjax.main', '--mode=compile', '--topology=v5p-128',
                                    '--config=configs/c2rl.py:pretrain', '--workdir=gs://b/w']
  assert shlex.split(create)[4] == 'create'
  # run asks gcloud which slice the VM is, then compiles for it, then starts the job.
  describe, check, start = dry_run('tpu_vm.sh', *common, 'run', *job).splitlines()
  assert shlex.split(describe)[4:6] == ['describe', 'slt']
  assert '--topology=ACCELERATOR_TYPE' in shlex.split(check)
  assert 'sltjax.main --multihost' in shlex.split(start)[-1]
  assert len(dry_run('tpu_vm.sh', *common, '--accelerator=v4-32', 'run', *job).splitlines()) == 2


def test_tpu_vm_builds_a_dataset_into_the_bucket_on_worker_0():
  common = ['--name=slt', '--zone=us-central2-b']
  build = ['--', '--dataset=phoenix2014t', '--data_dir=gs://b/tensorflow_datasets']
  *ssh, remote = shlex.split(dry_run('tpu_vm.sh', *common, 'build', *build))
  assert ssh[-1] == '--worker=0'
  assert remote == ('--command=cd ~/sltjax && .venv/bin/python -m sltjax.data.build '
                    '--dataset=phoenix2014t --data_dir=gs://b/tensorflow_datasets ')
  *_, remote = shlex.split(dry_run('tpu_vm.sh', *common, '--release=gs://b/raw/PHOENIX-2014-T',
                                   'build', *build))
  assert remote == ('--command=cd ~/sltjax && mkdir -p ~/release && gcloud storage cp -r '
                    'gs://b/raw/PHOENIX-2014-T ~/release && .venv/bin/python -m sltjax.data.build '
                    '--dataset=phoenix2014t --data_dir=gs://b/tensorflow_datasets '
                    '--manual_dir=$HOME/release/PHOENIX-2014-T')


def test_tpu_vm_requires_name_and_command():
  result = subprocess.run(['bash', str(REPO / 'launch' / 'tpu_vm.sh'), '--dry-run', 'create'],
                          capture_output=True, text=True)
  assert result.returncode == 2 and '--name and --zone are required' in result.stderr


def test_gpu_multinode_commands():
  lines = dry_run('gpu_multinode.sh', '--hosts=n0,n1', '--port=99', '--',
                  '--workdir=/shared/w').splitlines()
  assert len(lines) == 2
  for i, line in enumerate(lines):
    ssh, host, remote, background = shlex.split(line)
    assert (ssh, host, background) == ('ssh', f'n{i}', '&')
    assert remote.endswith(f'sltjax.main --coordinator_address=n0:99 --num_processes=2 '
                           f'--process_id={i} --workdir=/shared/w ')
