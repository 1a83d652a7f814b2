"""rnnkit.runtime: load an rnnkit bundle and run it with onnxruntime or numba; never imports torch.

    from rnnkit.runtime import load
    model = load("sentiment.bundle", backend="auto")   # or "onnxruntime" / "numba"
    model.predict(["a gripping, funny film"])
"""

from .bundle import Bundle as Bundle, open_bundle as open_bundle
from .errors import (BackendUnavailableError as BackendUnavailableError, BundleError as BundleError,
                     InputError as InputError, ParityError as ParityError, RnnkitError as RnnkitError,
                     UnsupportedError as UnsupportedError)
from .model import Model as Model, Prediction as Prediction, Tagging as Tagging, load as load

__version__ = "0.1.0"


def __getattr__(name):
    # NumbaBackend imports numba; only pay for it (and only require it) when asked for.
    if name == "NumbaBackend":
        from .numba_backend.backend import NumbaBackend

        return NumbaBackend
    raise AttributeError(name)
