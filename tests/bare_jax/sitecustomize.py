"""Makes TensorFlow, TFDS, clu and TensorBoard invisible to a Python started with this folder on
PYTHONPATH, as on a bare JAX GPU host: `import tensorflow` fails and
`importlib.util.find_spec('tensorflow')` is None (what etils and orbax check)."""

import importlib.machinery, sys
HIDDEN = ("tensorflow", "tensorflow_datasets", "clu", "tensorboard")
class _Hide:
  @staticmethod
  def find_spec(name, path=None, target=None):
    if name.split(".")[0] in HIDDEN:
      return None
    return importlib.machinery.PathFinder.find_spec(name, path, target)
  @staticmethod
  def invalidate_caches():
    importlib.machinery.PathFinder.invalidate_caches()
sys.meta_path[:] = [_Hide if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
