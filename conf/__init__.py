"""recsys's Hydra configs, shipped inside the package as ``recsys.conf``.

The files live here, at the top of the repository, where people look for them;
``recsys/conf`` links here, so an installed wheel carries them and
``python -m recsys.train`` finds them (``config_path="pkg://recsys.conf"``) from any
working directory.
"""
