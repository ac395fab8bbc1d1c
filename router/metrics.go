package router

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/presenced/presenced/events"
)

// Counts returns how many agents are in each base status now: signed-in agents
// by the base status of their presence, everyone else (signed out, removed)
// under offline.
func (r *Router) Counts() map[events.BaseStatus]int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make(map[events.BaseStatus]int, len(events.BaseStatuses()))
	for _, b := range events.BaseStatuses() {
		out[b] = 0
	}
	signedIn := 0
	for b, set := range r.byStatus {
		out[b] += len(set)
		signedIn += len(set)
	}
	out[events.Offline] += len(r.agents) - signedIn
	return out
}

// agentsCollector exports Counts as a gauge per base status, read at scrape time.
type agentsCollector struct {
	r    *Router
	desc *prometheus.Desc
}

// NewAgentsCollector returns a Prometheus collector of the router's picture:
// metric name{base_status} = agents in that base status. It reports nothing
// until the picture is loaded, so a dashboard never shows a half-read fleet.
func NewAgentsCollector(r *Router, name string) prometheus.Collector {
	return agentsCollector{r: r, desc: prometheus.NewDesc(name,
		"Agents by the base status of their current presence (signed-out agents count as offline).",
		[]string{"base_status"}, nil)}
}

func (c agentsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c agentsCollector) Collect(ch chan<- prometheus.Metric) {
	if !c.r.statusReady.Load() {
		return
	}
	for b, n := range c.r.Counts() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), string(b))
	}
}
