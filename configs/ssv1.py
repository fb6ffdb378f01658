"""Something-Something V1 (JPEG frames, 100 px tall): the AK-Net paper's recipe.

Variants (`config.MODEL_VARIANTS`): `configs/ssv1.py:backbone=tdn,stage=2`; any field:
`--config.FIELD=VALUE`.
"""

from aknet_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.dataset.name = "something_something_v1"
  c.dataset.num_classes = 174
  config_lib.something_something_recipe(c)
  config_lib.measured_aknet(c)
  return config_lib.finish(c, arg)
