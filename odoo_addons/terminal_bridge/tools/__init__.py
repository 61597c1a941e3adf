from . import signing
