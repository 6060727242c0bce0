r"""IP-SLT (Yao et al., ICCV 2023) on an encoder-decoder system: the base system's config with a
`model.prototype` block (sltjax/models/systems/ipslt.py), so `system` stays the base's and
`--mode=eval`, `translate` and the base's starts (config.init) work as they do for it.

  gloss2text (default)       configs/gloss2text.py (from scratch; PHOENIX-2014T text files)
  gloss2text_pretrained      configs/gloss2text.py:pretrained (mBART-large-cc25 fine-tuned)
  mmtlb_sign2text            configs/mmtlb.py:sign2text
  c2rl_sign2text             configs/c2rl.py:slt
  gloss2text,runlocal        configs/gloss2text.py:runlocal (synthetic_signs' labels)
  mmtlb_sign2text,runlocal   configs/mmtlb.py:staged,runlocal (the README main job's last stage,
                             started from its two earlier stages' workdirs)
  c2rl_sign2text,runlocal    configs/c2rl.py:slt,runlocal (from the C2RL pretraining workdir)

  python -m sltjax.main --config=configs/ipslt.py:gloss2text,runlocal
  python -m sltjax.main --config=configs/ipslt.py:gloss2text --config.model.prototype.iterations=1
  python -m sltjax.main --config=configs/ipslt.py:mmtlb_sign2text,dataset=csl_daily ...

The base system's dataset choice and its other flags apply unchanged; K = 0
(--config.model.prototype.iterations=0) is exactly the base system. The ablation is
benchmarks/ablation_ipslt.py.
"""
import dataclasses

import ml_collections

from configs import c2rl, common, gloss2text, mmtlb
from sltjax.models.systems.ipslt import PrototypeConfig

# variant -> (base config module, its variant)
BASES = {
    'gloss2text': (gloss2text, 'default'),
    'gloss2text_pretrained': (gloss2text, 'pretrained'),
    'mmtlb_sign2text': (mmtlb, 'sign2text'),
    'c2rl_sign2text': (c2rl, 'slt'),
    'runlocal_gloss2text': (gloss2text, 'runlocal'),
    'runlocal_mmtlb_sign2text': (mmtlb, 'staged,runlocal'),
    'runlocal_c2rl_sign2text': (c2rl, 'slt,runlocal'),
}
VARIANTS = tuple(BASES)


def prototype(**overrides) -> ml_collections.ConfigDict:
  """The model.prototype block: PrototypeConfig's documented defaults, with `overrides`."""
  return ml_collections.ConfigDict({**dataclasses.asdict(PrototypeConfig()), **overrides})


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant, dataset = common.parse_argument(arg, VARIANTS, 'gloss2text', 'configs/ipslt.py')[:2]
  module, base_variant = BASES[variant]
  c = module.get_config(f'{base_variant},dataset={dataset}')
  c.variant = variant
  c.model.prototype = prototype()
  return c
