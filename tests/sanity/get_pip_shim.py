"""Stand-in for the get-pip.py that ansible-test downloads to put pip into its sanity venvs.

ansible-test fetches that script from a file host outside the package registries, which this
project's machines cannot reach. It is run as ``python get_pip.py [pip options] PACKAGES``; this
shim does the same job with the interpreter's own ensurepip and then pip from PyPI.
"""

import ensurepip
import subprocess
import sys

# get-pip.py options that pip install itself does not know
GET_PIP_ONLY = ("--no-setuptools", "--no-wheel")

ensurepip.bootstrap(upgrade=True)
arguments = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install"] + arguments))
