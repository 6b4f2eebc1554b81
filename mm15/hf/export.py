"""``mm15 export --hf OUT --model DIR``: an mm15 checkpoint as a transformers model directory.

What OUT holds (written by transformers' own ``save_pretrained``, so its loaders read it)::

    config.json              MM15Config: the decoder as a native text_config, mm15's vision and
                             connector settings, image_token_id, auto_map (mm15.hf.configuration)
    model.safetensors        weights under the HF model's names (mm15.hf.weights; sharded with an
                             index past 5 GB)
    generation_config.json   BOS, every EOS id of the tokenizer, pad
    tokenizer.json, tokenizer_config.json, chat_template.jinja
                             the checkpoint's tokenizer and its chat template (mm15.data.chat_template)
    processor_config.json    the input pipeline's settings (mm15.hf.processing), auto_map
    configuration_mm15.py, modeling_mm15.py, processing_mm15.py
                             auto_map code for trust_remote_code users (mm15.hf.remote; they
                             import the mm15 package, which must be installed)

The directory is written to a temporary sibling and renamed into place when complete.  Bad input
is a ValueError or OSError naming what is wrong: no checkpoint at DIR, OUT existing and not an
empty directory, a decoder transformers cannot express.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from transformers import GenerationConfig, PreTrainedTokenizerFast
from transformers.initialization import no_init_weights

from mm15.hf.configuration import MM15Config, text_config_for
from mm15.hf.modeling import MM15ForConditionalGeneration
from mm15.hf.processing import MM15Processor
from mm15.hf.weights import hf_state_dict
from mm15.model.mm15 import MM15
from mm15.services.checkpoint import load_checkpoint
from mm15.tokenizer import MM15Tokenizer

REMOTE_CODE = Path(__file__).parent / "remote"
REMOTE_FILES = ("configuration_mm15.py", "modeling_mm15.py", "processing_mm15.py")
MODEL_AUTO_MAP = {
    "AutoConfig": "configuration_mm15.MM15Config",
    "AutoModelForImageTextToText": "modeling_mm15.MM15ForConditionalGeneration",
}
PROCESSOR_AUTO_MAP = {"AutoProcessor": "processing_mm15.MM15Processor"}


def export_hf(model_dir: str | Path, out: str | Path) -> Path:
    """Write the transformers directory of mm15 checkpoint ``model_dir`` to ``out``."""
    out = Path(out)
    _check_out(out)
    model, tokenizer = load_checkpoint(model_dir)
    hf_model = hf_model_of(model, tokenizer)
    processor = MM15Processor.from_mm15(
        PreTrainedTokenizerFast.from_pretrained(model_dir), model.cfg
    )
    processor.auto_map = PROCESSOR_AUTO_MAP
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        hf_model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        for name in REMOTE_FILES:
            shutil.copyfile(REMOTE_CODE / name, tmp / name)
        if out.exists():
            out.rmdir()  # empty, checked above
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def hf_model_of(model: MM15, tokenizer: MM15Tokenizer) -> MM15ForConditionalGeneration:
    """``model`` as an :class:`MM15ForConditionalGeneration` sharing its tensors (only the MoE
    experts' gate/up pairs are concatenated into new ones)."""
    lm = model.cfg.lm
    text_config = text_config_for(
        lm, bos_id=tokenizer.bos_id, eos_ids=tokenizer.eos_ids, pad_id=tokenizer.pad_id
    )
    config = MM15Config.from_mm15(model.cfg, text_config)
    config.auto_map = MODEL_AUTO_MAP
    with no_init_weights():  # every tensor is replaced below
        hf_model = MM15ForConditionalGeneration(config)
    hf_model.load_state_dict(hf_state_dict(model.state_dict(), lm), strict=True, assign=True)
    hf_model.tie_weights()  # assign=True replaced the shared embedding/head parameter
    hf_model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_ids, pad_token_id=tokenizer.pad_id
    )
    return hf_model.eval()


def _check_out(out: Path) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise FileExistsError(f"{out} exists and is not a directory; choose a new export path")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new or empty directory")
