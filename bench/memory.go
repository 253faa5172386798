package bench

import (
	"context"
	"fmt"
	"os/exec"
	"time"
)

func init() {
	Register(Figure{Name: "memory", Title: "Memory: one worker process with idle devices", Order: 30, Run: runMemory})
}

// pythonAgentRSS is the baseline: the resident memory of a bare Python
// process that has imported what Testflinger's agent imports from the
// standard library, idle. Testflinger runs one such process (and more)
// per device; the real agent, with its own modules, is larger.
func pythonAgentRSS(ctx context.Context) (int64, error) {
	cmd := exec.CommandContext(ctx, "python3", "-c",
		"import json, logging, os, shutil, signal, sys, tempfile, time, threading, subprocess, tarfile, http.client, urllib.request, ssl, select, pathlib; print('ready', flush=True); time.sleep(60)")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	buf := make([]byte, 16)
	if _, err := out.Read(buf); err != nil {
		return 0, err
	}
	time.Sleep(300 * time.Millisecond)
	return rss(cmd.Process.Pid)
}

func runMemory(ctx context.Context, env *Env) (*Result, error) {
	sizes := []int{10, 100, 1000}
	if env.Short {
		sizes = []int{2, 10}
	}
	s, err := startServer(ctx, env, "memory")
	if err != nil {
		return nil, err
	}
	defer s.stop()
	perSize := map[int][]float64{}
	var perDevice, python []float64
	for trial := range env.Trials {
		for _, n := range sizes {
			w, err := startWorkers(ctx, env, s, 1, n, fmt.Sprintf("mem%d", trial))
			if err != nil {
				return nil, err
			}
			time.Sleep(2 * time.Second) // settle: heartbeats, pull requests
			b, err := rss(w.cmds[0].Process.Pid)
			w.stop()
			if err != nil {
				return nil, err
			}
			perSize[n] = append(perSize[n], float64(b)/(1<<20))
			// Clear the device records so that the next size starts alike.
			for i := range n {
				_ = s.c.Devices.Purge(ctx, deviceName(0, i))
			}
		}
		small, large := sizes[0], sizes[len(sizes)-1]
		i := len(perSize[large]) - 1
		perDevice = append(perDevice, (perSize[large][i]-perSize[small][i])*1024/float64(large-small))
		if p, err := pythonAgentRSS(ctx); err == nil {
			python = append(python, float64(p)/1024)
		} else {
			env.Log.Warn("python baseline unavailable", "err", err)
		}
		env.Log.Info("memory trial", "trial", trial+1, "per_device_kb", perDevice[len(perDevice)-1])
	}
	var res Result
	for _, n := range sizes {
		res.Rows = append(res.Rows, row(fmt.Sprintf("worker RSS, %d idle devices", n), "MB", perSize[n], "", nil, "", nil))
	}
	large := sizes[len(sizes)-1]
	res.Rows = append(res.Rows, row(fmt.Sprintf("per idle device ((RSS at %d − RSS at %d) ÷ %d)", large, sizes[0], large-sizes[0]), "KB", perDevice,
		"idle Python process, per device in Testflinger", python, "≤ 100 KB", func(v, _ float64) bool { return v <= 100 }))
	if large >= 1000 {
		res.Rows = append(res.Rows, row(fmt.Sprintf("worker RSS with %d devices", large), "MB", perSize[large], "", nil, "≤ 100 MB",
			func(v, _ float64) bool { return v <= 100 }))
	}
	res.Notes = append(res.Notes, "One `flinger worker` process per size, each device serving a shared queue and its own (so 1,000 devices hold 1,001 queue consumers and pull requests), measured idle 2 s after every device reported idle (VmRSS). The baseline is a bare `python3` that imported the standard-library modules Testflinger's agent uses; Testflinger runs at least one such process per device.")
	return &res, nil
}
