"""rnnkit.runtime: load an rnnkit bundle and run it with onnxruntime or numba; never imports torch.

    from rnnkit.runtime import load
    model = load("sentiment.bundle", backend="auto")   # or "onnxruntime" / "numba"
    model.predict(["a gripping, funny film"])

    lm = load("lm.bundle")                              # a language model: streaming state + decoding
    print("".join(lm.generate("ROMEO:", max_tokens=100, temperature=0.8, seed=1)))

    g2p = load("g2p.bundle")                            # an encoder-decoder: greedy / beam search
    g2p.translate(["hello"], beam=5)                    # -> ["HH AH0 L OW1"]

``load`` returns the bundle's task object (``Classifier``, ``Tagger``, ``LanguageModel``,
``EncoderDecoder``), each a ``Model`` with only its own task's methods plus ``run_batch``.

The names below are imported on first use (PEP 562), not with the package: importing one
submodule (``rnnkit.runtime.errors``, which ``rnnkit --help`` needs) must not import onnx and
numpy, about 0.8 s.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import BackendUnavailableError as BackendUnavailableError
from .errors import BundleError as BundleError
from .errors import InputError as InputError
from .errors import ParityError as ParityError
from .errors import RnnkitError as RnnkitError
from .errors import UnsupportedError as UnsupportedError

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports these
    from .bundle import Bundle as Bundle
    from .bundle import open_bundle as open_bundle
    from .classifier import Classifier as Classifier
    from .classifier import Prediction as Prediction
    from .encoder_decoder import EncoderDecoder as EncoderDecoder
    from .encoder_decoder import Hypothesis as Hypothesis
    from .encoder_decoder import Translation as Translation
    from .language_model import Generation as Generation
    from .language_model import LanguageModel as LanguageModel
    from .model import Model as Model
    from .model import load as load
    from .numba_backend.backend import NumbaBackend as NumbaBackend
    from .state import State as State
    from .tagger import Tagger as Tagger
    from .tagger import Tagging as Tagging

__version__ = "0.1.0"

# public name -> the submodule that defines it (NumbaBackend imports numba: only when asked for)
_LAZY = {
    "Bundle": ".bundle",
    "open_bundle": ".bundle",
    "Classifier": ".classifier",
    "Prediction": ".classifier",
    "EncoderDecoder": ".encoder_decoder",
    "Hypothesis": ".encoder_decoder",
    "Translation": ".encoder_decoder",
    "Generation": ".language_model",
    "LanguageModel": ".language_model",
    "Model": ".model",
    "load": ".model",
    "NumbaBackend": ".numba_backend.backend",
    "State": ".state",
    "Tagger": ".tagger",
    "Tagging": ".tagger",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
