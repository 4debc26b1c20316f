"""label_efficiency.py with ``bayes.WARM_WITHIN_SD`` set from the environment (``WARM_SD``; 0 = warm refits run to
the tight tolerance, the code before 0d8b629). Usage, from the repository root:

    WARM_SD=0 .venv/bin/python benchmarks/results/warm_14th/le_warm_sd.py --datasets hwu64 --repeats 9 ...
"""
import os
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import learning.bayes as bayes  # noqa: E402

bayes.WARM_WITHIN_SD = float(os.environ["WARM_SD"])
sys.argv = [str(ROOT / "benchmarks/label_efficiency.py"), *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
