"""`gs://` mapped onto a temporary folder for a test (the `gcs` fixture).

The mapping is an fsspec filesystem registered for the `gs`/`gcs` protocols, which is what
etils.epath asks for a `gs://` path when TensorFlow is absent (with gcsfs installed, the real
GCS). So the stages' own code takes exactly the path it takes on a pod; only the bytes land in a
local folder. The working directory is another folder, so a path that slipped past epath (an
`open("gs://...")` or `os.makedirs`) would show up there as a `gs:` folder.
"""

import os
import sys

import fsspec.registry  # noqa: F401  (its module holds the registry)
import pytest
from etils.epath import backend, gpath
from fsspec.implementations.local import LocalFileSystem


@pytest.fixture
def gcs(tmp_path, monkeypatch):
  """`gs://B/x` -> tmp_path/"gcs"/B/x for the test; yields that root (cwd is tmp_path/"cwd")."""
  root = tmp_path / "gcs"
  root.mkdir()

  class Mapped(LocalFileSystem):
    """A local folder standing in for a bucket store: no folders needed before a write."""
    protocol = ("gs", "gcs")
    root_dir = str(root)

    def __init__(self, *args, **kwargs):
      kwargs.pop("finalize_on_close", None)
      super().__init__(*args, auto_mkdir=True, **kwargs)

    @classmethod
    def _strip_protocol(cls, path):
      path = os.fspath(path)
      if path.startswith(("gs://", "gcs://")):
        return os.path.join(cls.root_dir, path.split("://", 1)[1])
      return super()._strip_protocol(path)

    def glob(self, path, **kwargs):  # back to bucket paths (epath puts gs:// before them)
      return [p[len(self.root_dir) + 1:] if p.startswith(self.root_dir + "/") else p
              for p in super().glob(path, **kwargs)]

  for protocol in ("gs", "gcs"):  # what fsspec.register_implementation does, undone after
    monkeypatch.setitem(sys.modules["fsspec.registry"]._registry, protocol, Mapped)
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
  backend.fsspec_backend._get_filesystem.cache_clear()
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  yield root
  backend.fsspec_backend._get_filesystem.cache_clear()
  assert not os.listdir(cwd), f"a path went around epath: {os.listdir(cwd)} in the cwd"
