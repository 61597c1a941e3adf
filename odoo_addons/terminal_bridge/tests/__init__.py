from . import test_signing
from . import test_api
from . import test_routes
from . import test_pairing
from . import test_bus
from . import test_bridge_record
from . import test_end_to_end
from . import test_command_size
