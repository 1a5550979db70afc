"""Layer 3: the Redis wire format. The key and hash-field schema, script loading, the codec that
builds each script call and decodes each reply once, connections, change notices, the stand-in's
seed. Imports ``core`` and ``rules``."""
