package router

import (
	"encoding/json"
	"net/http"
	"path"
	"strconv"
)

// EligibleHandler answers the eligibility query over HTTP, with the same JSON
// as the NATS query: 200 with the list, 404 for an unknown workstream, and 503
// (with Retry-After) while the router is not Ready, so that a client never
// mistakes a half-loaded picture for "nobody may take this work". Mount it on
// a pattern with a {workstreamId} wildcard, e.g. "GET /eligible/{workstreamId}";
// without one the last element of the path names the workstream.
func (r *Router) EligibleHandler() http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, req *http.Request) {
		id := req.PathValue("workstreamId")
		if id == "" {
			id = path.Base(req.URL.Path)
		}
		reply, code, err := r.eligibleReply(id)
		if err != nil {
			if code == http.StatusServiceUnavailable {
				rw.Header().Set("Retry-After", strconv.Itoa(1))
			}
			http.Error(rw, err.Error(), code)
			return
		}
		rw.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(rw).Encode(reply)
	})
}
