// Following a job, tuning or import: its state now, then every change over the job's server-sent events.
import { api, streamEvents } from "../api.js";
import { guarded, h, toast } from "../dom.js";

export const LIVE = ["queued", "running"];

/** Calls `update(job)` with the job and each change; resolves to its last state, or null when the screen is left. */
export async function followJob(job, update, signal) {
  update(job);
  if (!LIVE.includes(job.state)) return job;
  let last = job;
  try {
    await streamEvents(`/jobs/${job.id}/events`, (event, data) => {
      last = data;
      if (event === "progress") update(data);
    }, signal);
  } catch (err) {
    if (err.name === "AbortError") return null;
    throw err;
  }
  return last;
}

/** The button that asks a job (tuning or import) to stop; the job's events then show it ending. */
export function cancelButton(job, id, label, what) {
  return h("button", { class: "danger", id, onclick: guarded(async () => {
    await api("POST", `/jobs/${job.id}/cancel`);
    toast(`Asked ${what} ${job.id} to stop`);
  }) }, label);
}
