"""Every shipped experiment config loads, and the reference recipes build their models."""

import pytest
from flax import nnx

from m4.config import load_config
from m4.convert.ml4m_modalities import reference_spec
from m4.model.fourm import FourM, count_params
from m4.train import loop

RECIPES = [("fourm7.py", "B", "base"), ("fourm7.py", "L", "large"), ("fourm7.py", "XL", "xl"),
           ("fourm21.py", "B", "base"), ("fourm21.py", "L", "large"), ("fourm21.py", "XL", "xl")]
BLOCKS = {"base": 198_236_160, "large": 704_692_224, "xl": 2_818_768_896}


@pytest.mark.parametrize("file, size, preset", RECIPES)
def test_reference_recipes(file, size, preset):
    c = load_config(f"experiments/{file}:{size}")
    assert c.model.size == preset and c.model.dtype == "bfloat16"
    assert c.optimizer.b1 == 0.9 and c.optimizer.b2 == 0.95 and c.optimizer.weight_decay == 0.05
    per_sample = c.masking.input_tokens + c.masking.target_tokens
    # 500B tokens in total, 10B of warmup, as the reference counts them.
    assert abs(c.total_steps * c.batch_size * per_sample - 500e9) / 500e9 < 1e-3
    assert abs(c.optimizer.warmup_steps * c.batch_size * per_sample - 10e9) / 10e9 < 1e-3
    mixture = load_config(f"{c.masking.mixture_file}:{c.masking.mixture}")
    assert set(c.modalities) <= set(mixture.modalities.keys())
    specs = [reference_spec(m, is_input=True, is_target=True) for m in c.modalities]
    model_cfg = loop.model_config(c, specs)
    abstract = nnx.eval_shape(lambda: FourM(model_cfg, rngs=nnx.Rngs(0)))
    assert count_params(abstract, blocks_only=True) == BLOCKS[preset]


def test_demo_config_and_overrides():
    c = load_config("experiments/demo.py", ["batch_size=64", "model.dim=256"])
    assert c.batch_size == 64 and c.model.dim == 256
    with pytest.raises(ValueError, match="unknown variant"):
        load_config("experiments/demo.py:nope")
