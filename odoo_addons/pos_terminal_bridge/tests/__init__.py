from . import test_payment_method
from . import test_tours
from . import test_bench
