package sqsqueue_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/leveehq/levee/queue"
	"github.com/leveehq/levee/store/sqs/sqsqueue"
)

// apiActions are the IAM actions of every method of sqsqueue.API (SQS
// authorizes a batch call by its single-message action).
func apiActions() []string {
	t := reflect.TypeFor[sqsqueue.API]()
	var out []string
	for i := range t.NumMethod() {
		out = append(out, "sqs:"+strings.TrimSuffix(t.Method(i).Name, "Batch"))
	}
	return out
}

// queueSpec is what a deployment file declares for one levee queue.
type queueSpec struct {
	prefix, name string // the defaults of its parameters
	mainName     string // the main queue's name, defaults substituted
	dlqName      string
	redrive      bool
	actions      []string
}

func sub(s string, vars map[string]string) string {
	for k, v := range vars {
		s = strings.ReplaceAll(s, "${"+k+"}", v)
	}
	return s
}

func cfnQueueSpec(t *testing.T, path string) queueSpec {
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Parameters map[string]struct {
			Default any `yaml:"Default"`
		} `yaml:"Parameters"`
		Resources map[string]struct {
			Type       string `yaml:"Type"`
			Properties struct {
				QueueName struct {
					Sub string `yaml:"Fn::Sub"`
				} `yaml:"QueueName"`
				RedrivePolicy  map[string]any `yaml:"RedrivePolicy"`
				PolicyDocument struct {
					Statement []struct {
						Action []string `yaml:"Action"`
					} `yaml:"Statement"`
				} `yaml:"PolicyDocument"`
			} `yaml:"Properties"`
		} `yaml:"Resources"`
	}
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	vars := map[string]string{}
	for k, p := range doc.Parameters {
		vars[k] = strings.TrimSpace(strings.Trim(yamlString(p.Default), `"`))
	}
	spec := queueSpec{prefix: vars["QueuePrefix"], name: vars["QueueName"]}
	for _, r := range doc.Resources {
		switch r.Type {
		case "AWS::SQS::Queue":
			n := sub(r.Properties.QueueName.Sub, vars)
			if r.Properties.RedrivePolicy != nil {
				spec.mainName = n
				_, spec.redrive = r.Properties.RedrivePolicy["maxReceiveCount"]
			} else {
				spec.dlqName = n
			}
		case "AWS::IAM::ManagedPolicy":
			for _, s := range r.Properties.PolicyDocument.Statement {
				spec.actions = append(spec.actions, s.Action...)
			}
		}
	}
	return spec
}

func yamlString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func terraformQueueSpec(t *testing.T, path string) queueSpec {
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Variable map[string]struct {
			Default any `json:"default"`
		} `json:"variable"`
		Resource struct {
			Queues map[string]struct {
				Name    string `json:"name"`
				Redrive string `json:"redrive_policy"`
			} `json:"aws_sqs_queue"`
		} `json:"resource"`
		Data struct {
			Policies map[string]struct {
				Statement []struct {
					Actions []string `json:"actions"`
				} `json:"statement"`
			} `json:"aws_iam_policy_document"`
		} `json:"data"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	vars := map[string]string{}
	for k, v := range doc.Variable {
		vars["var."+k] = strings.Trim(yamlString(v.Default), `"`)
	}
	spec := queueSpec{prefix: vars["var.queue_prefix"], name: vars["var.queue_name"]}
	for _, q := range doc.Resource.Queues {
		n := sub(q.Name, vars)
		if q.Redrive != "" {
			spec.mainName, spec.redrive = n, strings.Contains(q.Redrive, "maxReceiveCount") && strings.Contains(q.Redrive, "aws_sqs_queue.dlq.arn")
		} else {
			spec.dlqName = n
		}
	}
	for _, p := range doc.Data.Policies {
		for _, s := range p.Statement {
			spec.actions = append(spec.actions, s.Actions...)
		}
	}
	return spec
}

// TestDeployFiles: the shipped SQS queue definitions parse, name their
// queues as sqsqueue finds them (Prefix + name, DLQ + "-dlq"), set SQS's
// redrive to the DLQ, grant every action the backend calls, and a backend
// works on queues created with those names.
func TestDeployFiles(t *testing.T) {
	dir := filepath.Join("..", "..", "..", "deploy", "aws")
	endpoint := startGoaws(t, buildGoaws(t))
	for _, tc := range []struct {
		file string
		spec func(*testing.T, string) queueSpec
	}{
		{"cloudformation/sqs-queue.yaml", cfnQueueSpec},
		{"terraform/sqs-queue/main.tf.json", terraformQueueSpec},
	} {
		t.Run(tc.file, func(t *testing.T) {
			s := tc.spec(t, filepath.Join(dir, tc.file))
			if s.prefix == "" || s.name == "" || s.mainName != s.prefix+s.name || s.dlqName != s.mainName+"-dlq" || !s.redrive {
				t.Fatalf("spec %+v: want main %q, DLQ %q with a redrive policy", s, s.prefix+s.name, s.prefix+s.name+"-dlq")
			}
			for _, a := range apiActions() {
				if !slices.Contains(s.actions, a) {
					t.Errorf("policy lacks %s (a method of sqsqueue.API)", a)
				}
			}
			c := newClient(t, endpoint)
			// Unique per run: goaws outlives subtests. The suffix goes on
			// the prefix, as a deployment with another prefix would.
			prefix := randomPrefix() + s.prefix
			createQueues(t, c, prefix, 30, 5, s.name)
			b, err := sqsqueue.New(newFidelity(c), sqsqueue.Options{Prefix: prefix})
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			now := time.Now()
			m := &queue.Message{ID: "m1", Queue: s.name, EnqueuedAt: now}
			if _, err := b.Enqueue(ctx, queue.EnqueueRequest{Messages: []*queue.Message{m}, Now: now}); err != nil {
				t.Fatal(err)
			}
			cs, err := b.Claim(ctx, queue.ClaimRequest{Queue: s.name, Now: now, LeaseUntil: now.Add(time.Minute), Limit: 1})
			if err != nil || len(cs) != 1 || b.Ack(ctx, s.name, "m1", cs[0].Token) != nil {
				t.Fatalf("Claim on the declared queues: %+v, %v", cs, err)
			}
		})
	}
}
