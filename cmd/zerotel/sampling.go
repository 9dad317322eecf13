package main

import (
	"fmt"
	"os"
	"strconv"

	gohttp "github.com/zerotel/zerotel/probes/go/net/http"
)

// samplingFromEnv reads OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG as
// the OpenTelemetry specification defines them (default
// parentbased_always_on); ratio >= 0 (--sample-ratio) overrides the ratio
// and makes the sampler a ratio one.
func samplingFromEnv(ratio float64) (gohttp.Sampling, error) {
	name := os.Getenv("OTEL_TRACES_SAMPLER")
	if name == "" {
		name = "parentbased_always_on"
	}
	arg := 1.0
	if v := os.Getenv("OTEL_TRACES_SAMPLER_ARG"); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f < 0 || f > 1 {
			return gohttp.Sampling{}, fmt.Errorf("OTEL_TRACES_SAMPLER_ARG=%q: want a ratio between 0 and 1", v)
		}
		arg = f
	}
	var s gohttp.Sampling
	switch name {
	case "always_on":
		s = gohttp.Sampling{Ratio: 1}
	case "always_off":
		s = gohttp.Sampling{Ratio: 0}
	case "traceidratio":
		s = gohttp.Sampling{Ratio: arg}
	case "parentbased_always_on":
		s = gohttp.Sampling{Ratio: 1, ParentBased: true}
	case "parentbased_always_off":
		s = gohttp.Sampling{Ratio: 0, ParentBased: true}
	case "parentbased_traceidratio":
		s = gohttp.Sampling{Ratio: arg, ParentBased: true}
	default:
		return s, fmt.Errorf("OTEL_TRACES_SAMPLER=%q is not supported: use always_on, always_off, traceidratio or their parentbased_ forms", name)
	}
	if ratio >= 0 {
		if ratio > 1 {
			return s, fmt.Errorf("--sample-ratio %v: want a ratio between 0 and 1", ratio)
		}
		s.Ratio = ratio
	}
	return s, nil
}
