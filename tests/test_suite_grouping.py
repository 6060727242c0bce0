"""The suite's own machinery: `--dist loadgroup` keeps the tests of one xdist_group on one worker
(the modules that build shared workdirs once rely on it; with pytest 9.2, pytest-xdist 3.8's
grouping silently did nothing and each worker built them itself)."""
import os
import subprocess
import sys

GROUPED = '''
import os, pytest
pytestmark = pytest.mark.xdist_group('shared')
@pytest.mark.parametrize('i', range(6))
def test_records_its_worker(i):
  with open(os.path.join(os.environ['GROUP_RECORDS'], f'ran_{i}'), 'w') as record:
    record.write(os.environ['PYTEST_XDIST_WORKER'])
'''


def test_an_xdist_group_runs_on_one_worker(tmp_path):
  (tmp_path / 'test_grouped.py').write_text(GROUPED)
  done = subprocess.run(
      [sys.executable, '-m', 'pytest', '-n', '2', '--dist', 'loadgroup', '-q', '-p',
       'no:cacheprovider', 'test_grouped.py'],
      cwd=tmp_path, capture_output=True, text=True, timeout=300,
      env={**os.environ, 'GROUP_RECORDS': str(tmp_path)})
  assert done.returncode == 0, done.stdout + done.stderr
  workers = {p.read_text() for p in tmp_path.glob('ran_*')}
  assert len(list(tmp_path.glob('ran_*'))) == 6 and len(workers) == 1, workers
