"""Network-namespace lab pieces shared by Outpost's benchmarks.

Benchmarks must compare Outpost with a plain link and with strongSwan on the
same machine, in the same run, because absolute figures on a shared 2-core VM
swing by tens of percent from one minute to the next: only ratios measured
side by side mean anything. This package holds what every such benchmark
needs, one job per module:

- :mod:`netlab.process`: external programs (presence check, bounded runs,
  stopping and killing) and the :data:`~netlab.process.CLEANUP` registry that
  undoes every resource on every exit path;
- :mod:`netlab.netns`: :class:`~netlab.netns.NamespacePair`, two network
  namespaces joined by a veth pair, and commands run inside namespaces;
- :mod:`netlab.cpu`: :class:`~netlab.cpu.CpuMeter`, CPU seconds of a set of
  process trees from ``/proc``, so a throughput figure can be read together
  with what it cost;
- :mod:`netlab.iperf`: :class:`~netlab.iperf.Iperf3`, one-shot iperf3 TCP and
  UDP runs parsed from ``iperf3 -J``;
- :mod:`netlab.outpost`: :class:`~netlab.outpost.OutpostManualTunnel`,
  Outpost's manually keyed data plane (``python -m common.dataplane.manual``)
  as a managed subprocess;
- :mod:`netlab.office`: :class:`~netlab.office.OfficeLab`, the road-warrior
  lab of ``make demo`` (office LAN host, concentrator, laptop), the files
  that configure the real concentrator and client in it, and
  :class:`~netlab.office.LoggedProcess` for long-running programs;
- :mod:`netlab.swan`: :class:`~netlab.swan.StrongSwan` and
  :class:`~netlab.swan.SwanTunnel`, charon 5.9.8 with its userspace ESP
  (kernel-libipsec) inside a namespace, configured from Python strings.

It is deliberately self-contained (standard library and external programs
only) so it runs before the project's own packages import, and it never
touches the host's interfaces or routes: everything lives in namespaces that
it creates and removes itself. Scripts in ``bench/`` import the submodules
directly (``from netlab.netns import NamespacePair``); this file re-exports
nothing.
"""
