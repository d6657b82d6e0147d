"""The dashboard's pages, one module each: ``view(data, ...)`` returns what the page shows as plain data.

:mod:`.overview` (``/``), :mod:`.actor` (``/actor``), :mod:`.queues` (``/queues``), :mod:`.tokens`
(``/tokens``) and :mod:`.confidence` (``/confidence``) cover ranges of whole days; :mod:`.now` (``/now``)
covers the last hours, in minutes; :mod:`.alerts` (``/alerts``, and the banner of firing alerts on every
page) shows what the alert evaluator stored. Each reads through
:class:`~dramatiq_opmetrics.dashboard.data.DashboardData`.
"""
