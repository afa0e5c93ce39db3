"""Work on a Ray cluster whose machines share nothing but Ray: connection, resource checks, retries, time limits
and progress (:mod:`~spared.cluster.session`), files to and from the nodes (:mod:`~spared.cluster.transfer`),
and catalogue dataset preparation on the cluster (:mod:`~spared.cluster.prepare`).

The benchmark's Ray executor is :class:`spared.bench.RayExecutor`. Nothing here imports Ray until it is used.
"""
