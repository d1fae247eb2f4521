"""autoexp: Hydra and Lightning experiments with autoencoders, PCA and k-means."""

import atexit
import os
import warnings

# OpenBLAS, the BLAS of numpy and scipy, keeps its idle threads spinning for about 0.1 s after
# each call. The PCA and k-means code mixes numpy and scipy calls with torch operations, and a
# torch operation that ran while those threads spun took 2 to 2.5 times as long on a 2-core
# CPU. 2^20 cycles, under a millisecond, is enough to reuse the threads across back-to-back
# calls. It takes effect only where autoexp is imported before numpy, as in autoexp's
# commands; a value the user set is kept.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")

# Lightning 2.6 builds torch's LeafSpec in its pytree helper, and torch 2.14 deprecates
# LeafSpec with a FutureWarning that every run printed and wrote to train.log. The filter
# matches that message from Lightning's module only, so other uses still warn.
warnings.filterwarnings(
    "ignore",
    message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    category=FutureWarning,
    module=r"pytorch_lightning\.utilities\._pytree",
)

from autoexp.cuda_check import drop_nvml_check_without_nvml  # noqa: E402
from autoexp.distributed import destroy_process_group_at_exit  # noqa: E402
from autoexp.models import load_model  # noqa: E402

atexit.register(destroy_process_group_at_exit)
# Runs after the import of Lightning above, which sets the variable. DDP workers import autoexp
# as well, so it runs there too.
drop_nvml_check_without_nvml()

__version__ = "0.1.0"

__all__ = ["__version__", "load_model"]
