"""The monitored sampling engine: run a diffusers pipeline while watching its x0 estimate.

The engine takes run parameters (:mod:`.params`), a control object (:mod:`.control`) and an event
sink (:mod:`.events`), and knows nothing about WebSockets. :func:`.monitor.run_monitored` is the
entry point; :mod:`.policy` decides, :mod:`.x0` captures the estimate, :mod:`.previews` decodes
it, :mod:`.verifiers` scores it, :mod:`.samplers` names the schedulers.

Importing this package imports no torch: the pure modules (params, events, control, policy) stay
usable without it.
"""
