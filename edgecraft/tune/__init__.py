"""``edgecraft tune``: search a recipe's compression space under an accuracy budget.

The pieces are split by concern: ``space`` (the recipe's ``search:`` section and the concrete recipe of a trial),
``trial`` (one trial: a recipe run with a cheap pruning proxy), ``study`` (the Optuna driver and the tune folder),
``tracking`` (MLflow), ``distributed`` (Ray) and ``commands`` (the command line). Nothing here imports Optuna,
MLflow or Ray at import time: the recipe module imports ``space`` for the schema.
"""
