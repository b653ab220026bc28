// The official OpenAI Node SDK against this service, as a user's script would call it.
// usage: node transcribe.mjs BASE_URL AUDIO_FILE  -> one JSON line with what the SDK returned
import fs from "node:fs";
import OpenAI from "openai";

const [baseURL, audio] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "anything", maxRetries: 0 });
const json = await client.audio.transcriptions.create({
  model: "whisper-1", file: fs.createReadStream(audio), temperature: 0,
});
const srt = await client.audio.transcriptions.create({
  model: "whisper-1", file: fs.createReadStream(audio), response_format: "srt", temperature: 0,
});
let notMedia = null;
try {
  await client.audio.transcriptions.create({ model: "whisper-1", file: fs.createReadStream(process.argv[1]) });
} catch (error) {
  notMedia = { name: error.constructor.name, status: error.status, param: error.param };
}
console.log(JSON.stringify({ text: json.text, srtType: typeof srt, srt, notMedia }));
