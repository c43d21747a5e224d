"""The trend model: will the close be higher one horizon from now? Trained, evaluated, served live.

* :mod:`~processor.model.features` / :mod:`~processor.model.labels`: what the model sees and predicts.
* :mod:`~processor.model.dataset`: candles from the archive or the database -> labelled rows.
* :mod:`~processor.model.estimators`: logistic regression (statsmodels) and SGD (scikit-learn).
* :mod:`~processor.model.walkforward` / :mod:`~processor.model.metrics`: honest out-of-sample scores.
* :mod:`~processor.model.train`: ``cryptostream train``; :mod:`~processor.model.registry`: files on disk.
* :mod:`~processor.model.scorer`: the processor's live scorer.

Only the light registry reader is imported here, so the API can call :func:`load_report` cheaply.
"""

from processor.model.registry import load_report

__all__ = ["load_report"]
