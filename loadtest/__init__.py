"""outpost-loadtest: many simulated IKEv2 road warriors against one gateway (issue 6).

Layout (top-level package, beside ``client`` and ``concentrator``, because it
is a tool of its own that uses the client's profiles and the protocol cores
but belongs to neither product):

- ``packets``: inner probes (ICMP echo, UDP) and the strict reply check;
- ``profile``: load-test profiles (a client profile, ``{n}`` ids, an issuing CA);
- ``issuer``: per-client ECDSA certificates issued from that CA;
- ``client``: one simulated road warrior (initiator core, socket, ESP SAs);
- ``worker``: a worker process's select loop (and the IKE_SA_INIT flood), its
  deadlines in one ``common.timers.TimerQueue`` keyed by client number;
- ``pacing``: the open-loop handshake schedule;
- ``runner``: the parent (workers, pacing, aggregation, progress);
- ``gateway``: the concentrator's status and CPU through its control socket;
- ``stats``: tallies, percentiles and the report;
- ``cli``: ``outpost-loadtest``.
"""
