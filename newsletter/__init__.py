"""The newsletter publishing service: the domain, in plain Python (Celery lives in ``tasks``)."""

import os

# One BLAS thread per process unless the operator says otherwise. Work is spread over processes (one Celery
# pool process per core); a multi-threaded BLAS in each of them spins against the others: the related index's
# latent space (numpy QR/SVD) took 7.6 s of wall time instead of 2.5 s on 2 cores at load 3. Set before numpy
# is first imported (it reads these once); every entry point imports this package first.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
del _var
