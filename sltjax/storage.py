"""Where sltjax's files live: local folders, or Cloud Storage buckets (gs://) that every host of a
pod reads.

Every file the project reads or writes goes through `path()`, an `etils.epath.Path` (what TFDS and
orbax use too): Python's own file functions for local paths, gcsfs for gs://. Writes are atomic
either way: locally a temporary file is renamed over the target; a Cloud Storage object becomes
visible only once its upload completes, so a killed writer leaves the previous object (or none).

Clients reach Cloud Storage through the standard settings: Application Default Credentials, and
for an emulator STORAGE_EMULATOR_HOST (gcsfs), TENSORSTORE_GCS_HTTP_URL with
GOOGLE_AUTH_TOKEN_FOR_TESTING (orbax's TensorStore) and CLOUD_STORAGE_EMULATOR_ENDPOINT (ArrayRecord's
reader): `emulator_environment` gives them all for one endpoint.
"""
import logging
import os
import re
import shutil
import uuid

import fsspec
from etils import epath

from sltjax.errors import MissingInputError, UserError

# gcsfs keeps directory listings for the life of a process by default; other hosts and orbax's
# TensorStore write into the same folders, so every check must ask the bucket.
fsspec.config.conf.setdefault('gs', {})['use_listings_cache'] = False

REMOTE_PREFIXES = ('gs://',)
# Cloud Storage's rule for bucket names (dotted names may be longer; sltjax does not need them).
BUCKET_NAME = re.compile(r'[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]')


def is_remote(location) -> bool:
  return str(location).startswith(REMOTE_PREFIXES)


def path(location) -> epath.Path:
  """`location` (str or path) as an epath.Path: gs://bucket/... as is, a local path with ~
  expanded."""
  if isinstance(location, epath.Path):
    return location
  location = os.fspath(location)
  return epath.Path(location if is_remote(location) else os.path.expanduser(location))


def absolute(location) -> str:
  """A path that names the same file from any working directory (gs:// paths unchanged)."""
  location = os.fspath(location)
  return location if is_remote(location) else os.path.abspath(os.path.expanduser(location))


def join(location, *names: str) -> str:
  """os.path.join for local and gs:// paths alike (strings, as configs hold them)."""
  return os.path.join(os.fspath(location), *names)


def make_folder(location) -> None:
  """Creates a local folder and its parents; nothing for gs:// (Cloud Storage has no folders,
  and gcsfs would create a missing bucket)."""
  if not is_remote(location):
    path(location).mkdir(parents=True, exist_ok=True)


def write_bytes(location, data: bytes) -> None:
  """Writes `location` whole or not at all (its folder is created)."""
  target = path(location)
  make_folder(target.parent)
  if is_remote(target):
    target.write_bytes(data)  # an object appears only when its upload completes
    return
  temporary = target.parent / f'{target.name}.tmp{os.getpid()}'
  temporary.write_bytes(data)
  os.replace(temporary, target)


def write_text(location, text: str) -> None:
  """Writes `location` (UTF-8) whole or not at all."""
  write_bytes(location, text.encode('utf-8'))


def read_text(location) -> str:
  return path(location).read_text(encoding='utf-8')


def files_under(folder) -> list[str]:
  """Paths of every file under `folder`, relative to it, sorted."""
  folder = path(folder)
  unprefixed = lambda p: os.fspath(p).removeprefix('gs://')  # gcsfs's walk drops the scheme
  return sorted(os.path.relpath(os.path.join(unprefixed(root), name), unprefixed(folder))
                for root, _, names in folder.walk() for name in names)


def copy_file(source, target) -> None:
  """Copies one file (any mix of local and gs://), atomically at the target."""
  source, target = path(source), path(target)
  if is_remote(source) and is_remote(target):
    source.copy(target, overwrite=True)  # a copy inside Cloud Storage, without a download
    return
  make_folder(target.parent)
  temporary = target if is_remote(target) else target.parent / f'{target.name}.tmp{os.getpid()}'
  with source.open('rb') as reader, temporary.open('wb') as writer:
    shutil.copyfileobj(reader, writer, 16 << 20)
  if temporary != target:
    os.replace(temporary, target)


def copy_files(source, target, *, last: tuple[str, ...] = ()) -> None:
  """Copies every file under folder `source` to folder `target` (any mix of local and gs://),
  those whose names are in `last` after all others: a reader that takes `target` as complete
  once it holds one of them (TFDS's dataset_info.json) never sees a partial folder."""
  for relative in sorted(files_under(source), key=lambda f: (os.path.basename(f) in last, f)):
    copy_file(path(source) / relative, path(target) / relative)


def staging_folder(target) -> str:
  """Where a folder is assembled before `replace_folder` moves it to `target`."""
  return os.fspath(target).rstrip('/') + '.partial'


def is_complete(target) -> bool:
  """Whether the file or folder `target` exists and no move into it (replace_folder) is half
  done."""
  return path(target).exists() and not path(staging_folder(target)).exists()


def move_folder(source, target) -> None:
  """Moves the folder `source` to `target` (which must not exist). Locally a rename; with a gs://
  side a copy of every file, then the source's removal, so a move cut short leaves the source
  whole."""
  source, target = path(source), path(target)
  if is_remote(source) or is_remote(target):
    copy_files(source, target)
    source.rmtree()
  else:
    make_folder(target.parent)
    os.replace(source, target)


def replace_folder(target) -> None:
  """Moves the finished staging_folder(target) to `target`, replacing what was there; a move cut
  short leaves the staging folder behind and `is_complete` false."""
  if path(target).exists():
    path(target).rmtree()
  move_folder(staging_folder(target), target)


def copy_folder(source, target) -> None:
  """Copies the folder `source` (any mix of local and gs://) to `target` through its staging
  folder, so `target` is complete (is_complete) or absent."""
  staging = path(staging_folder(target))
  if staging.exists():
    staging.rmtree()  # left by an interrupted copy
  copy_files(source, staging)
  make_folder(staging)  # an empty source
  replace_folder(target)


DOWNLOADS = '~/.cache/sltjax/downloads'


def local_copy(location) -> str:
  """A local path holding the file or folder `location`: itself when local; for gs:// a copy made
  once under DOWNLOADS (for readers of local files only: torch, safetensors, FastText). Each host
  keeps its own copy; processes of one host that fetch it together each stage their own and the
  first to finish puts it in place. A copy is not refreshed if the object changes later."""
  location = os.fspath(location)
  if not is_remote(location):
    return os.path.expanduser(location)
  target = os.path.join(os.path.expanduser(DOWNLOADS), location[len('gs://'):].rstrip('/'))
  if os.path.exists(target):
    return target
  source, staging = path(location), f'{target}.partial-{os.getpid()}'
  if source.is_dir():
    copy_files(source, staging)
  else:
    copy_file(source, staging)
  try:
    os.replace(staging, target)
  except OSError:  # another process of this host put its copy there first
    shutil.rmtree(staging) if os.path.isdir(staging) else os.remove(staging)
  return target


def _cloud_problem(location: str, error: Exception, action: str) -> UserError:
  """The UserError for a Cloud Storage failure, naming the path and what to do."""
  detail = ' '.join(line.strip() for line in str(error).splitlines() if line.strip())[:300]
  code = getattr(error, 'code', None)  # gcsfs's HttpError
  bucket = location[len('gs://'):].split('/')[0]
  if isinstance(error, FileNotFoundError) or code == 404:
    return MissingInputError(
        f'{location}: the bucket gs://{bucket} does not exist. Create it (gcloud storage '
        f'buckets create gs://{bucket}) or fix the path.')
  if code == 401 or 'credentials' in detail.lower():
    return UserError(
        f'{location}: no valid Google Cloud credentials to {action} it ({detail}). Run '
        '`gcloud auth application-default login`, or on a Cloud TPU VM give the VM a service '
        'account with access to the bucket.')
  if code == 403 or isinstance(error, PermissionError) or detail.startswith('Forbidden'):
    role = 'Storage Object Admin' if action == 'write' else 'Storage Object Viewer'
    return UserError(f'{location}: permission denied to {action} it ({detail}). Grant this '
                     f'account {role} on gs://{bucket}.')
  return UserError(f'{location}: Cloud Storage failed to {action} it '
                   f'({type(error).__name__}: {detail}).')


def check_access(location, *, write: bool) -> None:
  """Fails early, with one clear message naming `location`, when a gs:// path's bucket is missing
  or this account cannot read it (or, with `write`, write into it). Local paths pass."""
  location = os.fspath(location)
  if not is_remote(location):
    return
  name = location[len('gs://'):].split('/')[0]
  if not BUCKET_NAME.fullmatch(name):
    raise UserError(f'{location}: {name!r} is not a valid bucket name (3 to 63 lowercase letters, '
                    'digits, dashes or underscores, starting and ending with a letter or digit).')
  cloud = fsspec.filesystem('gs')

  def listed(prefix: str) -> bool:  # a listing needs the viewer role
    try:
      cloud.ls(prefix, detail=False, refresh=True)
      return True
    except FileNotFoundError:  # no object under prefix, or no bucket
      return False

  gcsfs_log = logging.getLogger('gcsfs')  # it logs each refused request with a traceback
  level = gcsfs_log.level
  gcsfs_log.setLevel(logging.CRITICAL)
  try:
    if not listed(location[len('gs://'):]) and not listed(name):
      raise FileNotFoundError(name)
    if write:
      probe = f'{location.rstrip("/")}/.sltjax-write-check-{uuid.uuid4().hex}'
      cloud.pipe_file(probe, b'')
      cloud.rm_file(probe)
  except Exception as e:  # pylint: disable=broad-except  (gcsfs raises OSError, HttpError, ...)
    raise _cloud_problem(location, e, 'write' if write else 'read') from e
  finally:
    gcsfs_log.setLevel(level)


def emulator_environment(endpoint: str) -> dict[str, str]:
  """The settings that point every Cloud Storage client sltjax uses at `endpoint`
  (http://HOST:PORT of a GCS emulator) instead of Google's servers."""
  return {
      'STORAGE_EMULATOR_HOST': endpoint,  # gcsfs
      'TENSORSTORE_GCS_HTTP_URL': endpoint,  # orbax checkpoints
      'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'emulator',  # TensorStore without real credentials
      'CLOUD_STORAGE_EMULATOR_ENDPOINT': endpoint,  # ArrayRecord's C++ reader (TFDS data)
      # gcsfs would ask the Storage Control API (gRPC, which emulators lack) for every bucket's
      # layout before each operation; plain buckets need no such lookup.
      'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false',
  }
