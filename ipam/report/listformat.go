package report

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
)

// WriteTable prints rows as aligned columns. Empty fields show as "-" so that
// the columns before DETAIL can be cut by whitespace.
func WriteTable(w io.Writer, rows []Row) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "IP\tCONTAINER\tIFNAME\tNETWORK\tRANGE\tSTATE\tDETAIL")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			r.IP, dash(r.ContainerID), dash(r.IfName), dash(r.Network), dash(rangeString(r)), r.State, dash(r.Detail))
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func rangeString(r Row) string {
	if !r.Range.IsValid() {
		return ""
	}
	return r.Range.String()
}

type jsonRow struct {
	IP          string `json:"ip"`
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifname"`
	Network     string `json:"network"`
	Range       string `json:"range,omitempty"`
	State       State  `json:"state"`
	Detail      string `json:"detail,omitempty"`
}

type jsonListing struct {
	Allocations []jsonRow `json:"allocations"`
	Warnings    []string  `json:"warnings"`
}

// WriteJSON prints the listing as one JSON document. The keys follow the
// store's own ("containerID", "ifname") so scripts can join the two.
func WriteJSON(w io.Writer, l Listing) error {
	doc := jsonListing{Allocations: []jsonRow{}, Warnings: []string{}}
	for _, r := range l.Rows {
		doc.Allocations = append(doc.Allocations, jsonRow{
			IP: r.IP.String(), ContainerID: r.ContainerID, IfName: r.IfName, Network: r.Network,
			Range: rangeString(r), State: r.State, Detail: r.Detail,
		})
	}
	doc.Warnings = append(doc.Warnings, l.Warnings...)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(doc)
}
