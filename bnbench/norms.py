"""The old import path of `bnbench.nn.norms`, kept so users' code keeps working:
`from bnbench.norms import BatchNorm` gives the very class `bnbench.nn.BatchNorm` is."""

import sys

from bnbench.nn import norms as _norms

sys.modules[__name__] = _norms
