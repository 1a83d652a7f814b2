"""rnnkit.runtime: load an rnnkit bundle and run it with onnxruntime or numba; never imports torch.

    from rnnkit.runtime import load
    model = load("sentiment.bundle", backend="auto")   # or "onnxruntime" / "numba"
    model.predict(["a gripping, funny film"])

    lm = load("lm.bundle")                              # a language model: streaming state + decoding
    print("".join(lm.generate("ROMEO:", max_tokens=100, temperature=0.8, seed=1)))

    g2p = load("g2p.bundle")                            # an encoder-decoder: greedy / beam search
    g2p.translate(["hello"], beam=5)                    # -> ["HH AH0 L OW1"]
"""

from .bundle import Bundle as Bundle, open_bundle as open_bundle
from .errors import (BackendUnavailableError as BackendUnavailableError, BundleError as BundleError,
                     InputError as InputError, ParityError as ParityError, RnnkitError as RnnkitError,
                     UnsupportedError as UnsupportedError)
from .model import (Hypothesis as Hypothesis, Model as Model, Prediction as Prediction, Tagging as Tagging,
                    load as load)
from .state import State as State

__version__ = "0.1.0"


def __getattr__(name):
    # NumbaBackend imports numba; only pay for it (and only require it) when asked for.
    if name == "NumbaBackend":
        from .numba_backend.backend import NumbaBackend

        return NumbaBackend
    raise AttributeError(name)
