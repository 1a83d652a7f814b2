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
"""

from .bundle import Bundle as Bundle, open_bundle as open_bundle
from .errors import (BackendUnavailableError as BackendUnavailableError, BundleError as BundleError,
                     InputError as InputError, ParityError as ParityError, RnnkitError as RnnkitError,
                     UnsupportedError as UnsupportedError)
from .classifier import Classifier as Classifier, Prediction as Prediction
from .encoder_decoder import EncoderDecoder as EncoderDecoder, Hypothesis as Hypothesis, Translation as Translation
from .language_model import Generation as Generation, LanguageModel as LanguageModel
from .model import Model as Model, load as load
from .state import State as State
from .tagger import Tagger as Tagger, Tagging as Tagging

__version__ = "0.1.0"


def __getattr__(name):
    # NumbaBackend imports numba; only pay for it (and only require it) when asked for.
    if name == "NumbaBackend":
        from .numba_backend.backend import NumbaBackend

        return NumbaBackend
    raise AttributeError(name)
