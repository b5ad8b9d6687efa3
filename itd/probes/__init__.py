"""The model side: load a model, score items with every probe in one pass, and decide which leaked.

    methods.py     the probe registry (loss, zlib, Min-K%, Min-K%++, Gap-K%, DC-PDD, ReCaLL, answer accuracy and
                   log-p), each probe's parameters, DC-PDD's token-frequency tables
    models.py      model loading (safetensors), devices, the CPU thread budget, batching with out-of-memory
                   back-off, the batched one-pass scorer
    parallel.py    one scoring replica per device, results merged in item order
    detection.py   calibrated detection (conformal p-values, FDR, set-level tests, the combined verdict) and its report
    codec.py       CoDeC, the dataset-level in-context confidence test

torch and transformers are imported only when a model is loaded. The probe registry's names are exported here,
so `from itd.probes import PROBES` reads as it always did.
"""

from itd.probes.methods import (
    PROBES,
    ConReCaLLConfig,
    DCPDDConfig,
    FrequencyTable,
    GapKConfig,
    Probe,
    ReCaLLConfig,
    build_frequency_table,
    corpus_frequency_table,
    probe_options,
    tokenizer_hash,
)

__all__ = [
    "Probe",
    "PROBES",
    "GapKConfig",
    "DCPDDConfig",
    "ReCaLLConfig",
    "ConReCaLLConfig",
    "FrequencyTable",
    "build_frequency_table",
    "corpus_frequency_table",
    "tokenizer_hash",
    "probe_options",
]
