"""Something-Something V2: the AK-Net paper's recipe on TSM (default), TDN or TSN.

Variants (`config.MODEL_VARIANTS`): `configs/ssv2.py:backbone=tdn,stage=2,alpha=0.5`; any field:
`--config.FIELD=VALUE`.
"""

from aknet_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.dataset.name = "something_something_v2"
  c.dataset.num_classes = 174
  config_lib.something_something_recipe(c)
  config_lib.measured_aknet(c)
  return config_lib.finish(c, arg)
