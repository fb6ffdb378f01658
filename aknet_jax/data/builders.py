"""Registers every aknet-jax dataset builder with TFDS.

Use: `tfds build NAME --imports=aknet_jax.data.builders`.
"""

from aknet_jax.data.diving48 import Diving48
from aknet_jax.data.something_something import SomethingSomethingV1
from aknet_jax.data.something_something import SomethingSomethingV2
from aknet_jax.data.synthetic_something import SyntheticSomething

BUILDERS = {b.name: b for b in (SyntheticSomething, SomethingSomethingV1, SomethingSomethingV2,
                                Diving48)}
