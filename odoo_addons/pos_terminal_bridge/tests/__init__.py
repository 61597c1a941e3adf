from . import test_payment_method
from . import test_tours
