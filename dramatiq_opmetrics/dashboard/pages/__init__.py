"""The dashboard's pages, one module each: ``view(data, ...)`` returns what the page shows as plain data.

:mod:`.overview` (``/``), :mod:`.actor` (``/actor``), :mod:`.queues` (``/queues``), :mod:`.tokens`
(``/tokens``) and :mod:`.confidence` (``/confidence``) cover ranges of whole days; :mod:`.now` (``/now``)
covers the last hours, in minutes. Each reads through :class:`~dramatiq_opmetrics.dashboard.data.DashboardData`.
"""
