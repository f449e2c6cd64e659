"""recsys's Hydra launcher: ``hydra/launcher=recsys`` runs sweep jobs in parallel
processes on disjoint CPU cores, each with its own hardware plan.

See :mod:`hydra_plugins.recsys_launcher.recsys_launcher`.
"""
