"""The fleet's services, one package per role, each run as ``python -m services.<role>``.

Several services compute on the same CPUs at once: a denoiser and the ControlNet
beside it step together, the text encoder and VAE of the next request run
meanwhile. torch's OpenMP threads spin on the cores while they wait for their
next piece of work, and a spinning thread holds a core the other process needs:
on 2 cores shared with another job, a 20-step ControlNet request took 50 s
instead of 1.9 s, and on a quiet machine some took 1-4 s longer than others.
So every service process lets its waiting threads sleep
(``OMP_WAIT_POLICY=PASSIVE``) unless its environment sets a policy. OpenMP reads
the variable once, when torch loads: hence here, the first module every service
process imports.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
