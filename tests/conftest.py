import os
# Tests never reach the model hub: everything they load is bundled or built on the spot.
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
